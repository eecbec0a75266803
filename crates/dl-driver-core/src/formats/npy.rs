//! numpy's `.npy` format (version 1.0, or 2.0 for headers over 64 KiB), and the `.npz` zip of `.npy` members that
//! `np.savez` (stored) and `np.savez_compressed` (deflated) write, streamed: CRCs and sizes are computed as data
//! passes and go into data descriptors, so no member is ever held in memory.

use std::io;

use super::Sink;

/// The `.npy` header for a C-order array of `descr` (e.g. `|u1`, `<f8`) and `shape`, padded to 64 bytes.
pub fn header(descr: &str, shape: &[u64]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        many => format!("({})", many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let (magic_len, version) = if dict.len() + 11 < 65_536 { (10, 1u8) } else { (12, 2u8) };
    let padded = (magic_len + dict.len() + 1).div_ceil(64) * 64;
    let header_len = padded - magic_len;
    let mut out = Vec::with_capacity(padded);
    out.extend_from_slice(b"\x93NUMPY");
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&u16::try_from(header_len).expect("checked above").to_le_bytes());
    } else {
        out.extend_from_slice(&u32::try_from(header_len).expect("headers are small").to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(padded - 1, b' ');
    out.push(b'\n');
    out
}

/// A zip archive written front to back into a [`Sink`] (stored members, data descriptors, zip64 when needed).
pub struct ZipStream<'a> {
    sink: &'a mut dyn Sink,
    offset: u64,
    members: Vec<Member>,
    current: Option<(Member, crc32fast::Hasher)>,
    deflater: Option<flate2::Compress>,
    deflated: Vec<u8>,
}

struct Member {
    name: String,
    crc: u32,
    size: u64,
    compressed: u64,
    offset: u64,
    method: u16,
}

const LOCAL: u32 = 0x0403_4b50;
const DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
const END64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
/// 1980-01-01, the earliest DOS date.
const DOS_DATE: u16 = (1 << 5) | 1;

impl<'a> ZipStream<'a> {
    pub fn new(sink: &'a mut dyn Sink) -> Self {
        Self { sink, offset: 0, members: Vec::new(), current: None, deflater: None, deflated: Vec::new() }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sink.write(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Starts member `name`, deflated or stored; its data follows through [`Self::data`].
    pub fn begin(&mut self, name: &str, deflate: bool) -> io::Result<()> {
        let method: u16 = if deflate { 8 } else { 0 };
        let mut h = Vec::with_capacity(30 + name.len());
        h.extend_from_slice(&LOCAL.to_le_bytes());
        h.extend_from_slice(&45u16.to_le_bytes()); // version needed: zip64
        h.extend_from_slice(&0x0008u16.to_le_bytes()); // sizes and CRC follow in a data descriptor
        h.extend_from_slice(&method.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&DOS_DATE.to_le_bytes());
        h.extend_from_slice(&[0; 12]); // CRC and sizes: in the descriptor
        h.extend_from_slice(&u16::try_from(name.len()).expect("member names are short").to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        let member = Member { name: name.to_string(), crc: 0, size: 0, compressed: 0, offset: self.offset, method };
        self.put(&h)?;
        self.current = Some((member, crc32fast::Hasher::new()));
        self.deflater = deflate.then(|| flate2::Compress::new(flate2::Compression::default(), false));
        Ok(())
    }

    /// Appends data to the current member.
    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (member, crc) = self.current.as_mut().expect("data() follows begin()");
        crc.update(bytes);
        member.size += bytes.len() as u64;
        if self.deflater.is_some() {
            return self.deflate(bytes, flate2::FlushCompress::None);
        }
        member.compressed += bytes.len() as u64;
        self.put(bytes)
    }

    /// Appends `len` sample bytes to the current member, generated in place when the member is stored.
    pub fn samples(&mut self, data: &mut crate::sink::data::SampleBytes, len: u64) -> io::Result<()> {
        if self.deflater.is_some() {
            return crate::sink::in_chunks(len, &mut |buf| data.fill(buf), &mut |chunk| self.data(chunk));
        }
        let (member, crc) = self.current.as_mut().expect("samples() follows begin()");
        self.sink.fill(len, &mut |buf| {
            data.fill(buf);
            crc.update(buf);
        })?;
        member.size += len;
        member.compressed += len;
        self.offset += len;
        Ok(())
    }

    /// Runs `input` through the deflater and writes what it produces.
    fn deflate(&mut self, mut input: &[u8], flush: flate2::FlushCompress) -> io::Result<()> {
        let deflater = self.deflater.as_mut().expect("deflating member");
        loop {
            self.deflated.clear();
            self.deflated.reserve(256 * 1024);
            let before = deflater.total_in();
            let status = deflater.compress_vec(input, &mut self.deflated, flush).map_err(io::Error::other)?;
            input = &input[usize::try_from(deflater.total_in() - before).expect("fits")..];
            let produced = std::mem::take(&mut self.deflated);
            self.sink.write(&produced)?;
            self.offset += produced.len() as u64;
            self.current.as_mut().expect("open member").0.compressed += produced.len() as u64;
            self.deflated = produced;
            let done = match flush {
                flate2::FlushCompress::Finish => status == flate2::Status::StreamEnd,
                _ => input.is_empty() && self.deflated.len() < self.deflated.capacity(),
            };
            if done {
                return Ok(());
            }
        }
    }

    /// Ends the current member with its data descriptor.
    pub fn end(&mut self) -> io::Result<()> {
        if self.deflater.is_some() {
            self.deflate(&[], flate2::FlushCompress::Finish)?;
            self.deflater = None;
        }
        let (mut member, crc) = self.current.take().expect("end() follows begin()");
        member.crc = crc.finalize();
        let mut d = Vec::with_capacity(24);
        d.extend_from_slice(&DESCRIPTOR.to_le_bytes());
        d.extend_from_slice(&member.crc.to_le_bytes());
        if member.size >= u64::from(u32::MAX) || member.compressed >= u64::from(u32::MAX) {
            d.extend_from_slice(&member.compressed.to_le_bytes());
            d.extend_from_slice(&member.size.to_le_bytes());
        } else {
            d.extend_from_slice(&(member.compressed as u32).to_le_bytes());
            d.extend_from_slice(&(member.size as u32).to_le_bytes());
        }
        self.put(&d)?;
        self.members.push(member);
        Ok(())
    }

    /// Writes the central directory and the end records.
    pub fn finish(mut self) -> io::Result<()> {
        let start = self.offset;
        let mut central = Vec::new();
        for m in &self.members {
            let mut extra = Vec::new();
            let (size32, compressed32) = if m.size >= u64::from(u32::MAX) || m.compressed >= u64::from(u32::MAX) {
                extra.extend_from_slice(&m.size.to_le_bytes());
                extra.extend_from_slice(&m.compressed.to_le_bytes());
                (u32::MAX, u32::MAX)
            } else {
                (m.size as u32, m.compressed as u32)
            };
            let offset32 = if m.offset >= u64::from(u32::MAX) {
                extra.extend_from_slice(&m.offset.to_le_bytes());
                u32::MAX
            } else {
                m.offset as u32
            };
            let extra = if extra.is_empty() {
                extra
            } else {
                let mut e = Vec::with_capacity(4 + extra.len());
                e.extend_from_slice(&1u16.to_le_bytes());
                e.extend_from_slice(&(extra.len() as u16).to_le_bytes());
                e.extend_from_slice(&extra);
                e
            };
            central.extend_from_slice(&CENTRAL.to_le_bytes());
            central.extend_from_slice(&45u16.to_le_bytes()); // made by
            central.extend_from_slice(&45u16.to_le_bytes()); // needed
            central.extend_from_slice(&0x0008u16.to_le_bytes());
            central.extend_from_slice(&m.method.to_le_bytes());
            central.extend_from_slice(&0u16.to_le_bytes());
            central.extend_from_slice(&DOS_DATE.to_le_bytes());
            central.extend_from_slice(&m.crc.to_le_bytes());
            central.extend_from_slice(&compressed32.to_le_bytes());
            central.extend_from_slice(&size32.to_le_bytes());
            central.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
            central.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
            central.extend_from_slice(&(0o100_644u32 << 16).to_le_bytes()); // a regular file, rw-r--r--
            central.extend_from_slice(&offset32.to_le_bytes());
            central.extend_from_slice(m.name.as_bytes());
            central.extend_from_slice(&extra);
        }
        let size = central.len() as u64;
        self.put(&central)?;
        let count = self.members.len() as u64;
        let mut end = Vec::new();
        if start >= u64::from(u32::MAX) {
            let end64_at = self.offset;
            end.extend_from_slice(&END64.to_le_bytes());
            end.extend_from_slice(&44u64.to_le_bytes());
            end.extend_from_slice(&45u16.to_le_bytes());
            end.extend_from_slice(&45u16.to_le_bytes());
            end.extend_from_slice(&[0; 8]); // disk numbers
            end.extend_from_slice(&count.to_le_bytes());
            end.extend_from_slice(&count.to_le_bytes());
            end.extend_from_slice(&size.to_le_bytes());
            end.extend_from_slice(&start.to_le_bytes());
            end.extend_from_slice(&LOCATOR64.to_le_bytes());
            end.extend_from_slice(&0u32.to_le_bytes());
            end.extend_from_slice(&end64_at.to_le_bytes());
            end.extend_from_slice(&1u32.to_le_bytes());
        }
        end.extend_from_slice(&END.to_le_bytes());
        end.extend_from_slice(&[0; 4]); // disk numbers
        end.extend_from_slice(&(count as u16).to_le_bytes());
        end.extend_from_slice(&(count as u16).to_le_bytes());
        end.extend_from_slice(&(size.min(u64::from(u32::MAX)) as u32).to_le_bytes());
        end.extend_from_slice(&(start.min(u64::from(u32::MAX)) as u32).to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.put(&end)
    }
}

/// Writing appends to the current member (for encoders).
impl io::Write for ZipStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.data(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_64_byte_aligned_and_parseable() {
        let h = header("|u1", &[3, 4, 5]);
        assert_eq!(h.len() % 64, 0);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert!(text.starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (3, 4, 5), }"));
        assert!(text.ends_with('\n'));
        assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, h.len() - 10);
        assert!(std::str::from_utf8(&header("<f8", &[7])[10..]).unwrap().contains("'shape': (7,)"));
    }
}
