//! TFRecord files of `tf.train.Example{image: bytes, size: int64}` records, one per sample, with TensorFlow's
//! framing (u64 length, masked CRC-32C of the length, data, masked CRC-32C of the data), and the index DALI's
//! reader uses: `index/{train|valid}/{file}.idx`, one `offset length` line per record.

use std::fmt::Write as _;
use std::io;

use super::{fill_samples, sample_bytes, Companion, Sink};
use crate::config::Config;
use crate::layout::FileSpec;
use crate::sink::data::SampleBytes;

/// The masked CRC-32C TFRecord stores.
pub fn masked_crc(data_crc: u32) -> u32 {
    data_crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> u64 {
    let mut buf = Vec::with_capacity(10);
    varint(value, &mut buf);
    buf.len() as u64
}

/// A length-delimited protobuf field header: tag then length.
fn field(number: u64, len: u64, out: &mut Vec<u8>) {
    varint((number << 3) | 2, out);
    varint(len, out);
}

/// The serialized `Example` split around the image bytes: (prefix, suffix).
pub fn example_parts(image_len: u64, size_value: u64) -> (Vec<u8>, Vec<u8>) {
    // image: Feature{bytes_list(1): BytesList{value(1): image}}
    let bytes_list = 1 + varint_len(image_len) + image_len;
    let image_feature = 1 + varint_len(bytes_list) + bytes_list;
    let image_entry = 1 + 1 + 5 + 1 + varint_len(image_feature) + image_feature;
    // size: Feature{int64_list(3): Int64List{value(1), packed}}
    let packed = varint_len(size_value);
    let int64_list = 1 + varint_len(packed) + packed;
    let size_feature = 1 + varint_len(int64_list) + int64_list;
    let size_entry = 1 + 1 + 4 + 1 + varint_len(size_feature) + size_feature;
    let features = 1 + varint_len(image_entry) + image_entry + 1 + varint_len(size_entry) + size_entry;

    let mut prefix = Vec::with_capacity(64);
    field(1, features, &mut prefix); // Example.features
    field(1, image_entry, &mut prefix); // Features.feature map entry
    field(1, 5, &mut prefix);
    prefix.extend_from_slice(b"image");
    field(2, image_feature, &mut prefix);
    field(1, bytes_list, &mut prefix); // Feature.bytes_list
    field(1, image_len, &mut prefix); // BytesList.value

    let mut suffix = Vec::with_capacity(32);
    field(1, size_entry, &mut suffix);
    field(1, 4, &mut suffix);
    suffix.extend_from_slice(b"size");
    field(2, size_feature, &mut suffix);
    field(3, int64_list, &mut suffix); // Feature.int64_list
    field(1, packed, &mut suffix); // Int64List.value, packed
    varint(size_value, &mut suffix);
    debug_assert_eq!(prefix.len() as u64 + image_len + suffix.len() as u64, 1 + varint_len(features) + features);
    (prefix, suffix)
}

/// Writes the records of one file; returns its index.
pub fn write(
    config: &Config,
    spec: &FileSpec,
    data: &mut SampleBytes,
    sink: &mut dyn Sink,
) -> io::Result<Vec<Companion>> {
    let image_len = sample_bytes(config, spec);
    let (prefix, suffix) = example_parts(image_len, image_len);
    let record_len = prefix.len() as u64 + image_len + suffix.len() as u64;
    let framed = 8 + 4 + record_len + 4;
    let mut index = String::new();
    for i in 0..spec.samples {
        let length = record_len.to_le_bytes();
        sink.write(&length)?;
        sink.write(&masked_crc(crc32c::crc32c(&length)).to_le_bytes())?;
        let mut crc = crc32c::crc32c(&prefix);
        sink.write(&prefix)?;
        fill_samples(sink, data, image_len, |b| crc = crc32c::crc32c_append(crc, b))?;
        crc = crc32c::crc32c_append(crc, &suffix);
        sink.write(&suffix)?;
        sink.write(&masked_crc(crc).to_le_bytes())?;
        writeln!(index, "{} {framed}", i * framed).expect("writing to a String");
    }
    let name = spec.key.rsplit('/').next().unwrap_or(&spec.key);
    Ok(vec![Companion { key: format!("index/{}/{name}.idx", spec.split.folder()), bytes: index.into_bytes() }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_prefix_and_suffix_frame_the_image() {
        let (prefix, suffix) = example_parts(3, 3);
        let mut record = prefix.clone();
        record.extend_from_slice(b"abc");
        record.extend_from_slice(&suffix);
        // Example{features{feature{key:"image" value{bytes_list{value:"abc"}}} feature{key:"size" value{int64_list{value:3}}}}}
        let expected: Vec<u8> = [
            &[0x0a, 0x21][..], // Example.features, 33 bytes
            &[0x0a, 0x10, 0x0a, 0x05],
            b"image",
            &[0x12, 0x07, 0x0a, 0x05, 0x0a, 0x03], // Feature.bytes_list{value: 3 bytes}
            b"abc",
            &[0x0a, 0x0d, 0x0a, 0x04],
            b"size",
            &[0x12, 0x05, 0x1a, 0x03, 0x0a, 0x01, 0x03], // Feature.int64_list{value: [3], packed}
        ]
        .concat();
        assert_eq!(record, expected);
    }

    #[test]
    fn masked_crc_matches_tensorflow() {
        // TensorFlow's masked CRC-32C of an empty string.
        assert_eq!(masked_crc(crc32c::crc32c(b"")), 0xa282_ead8);
    }
}
