//! DLIO's dataset layout: `{data_folder}/train/` and `valid/`, optional subfolders `{i % S}` (zero-padded to the
//! width of S), file names `{prefix}_{i:0N}_of_{n}.{ext}` with N the width of n, and rank striding (rank r writes
//! files r, r + P, r + 2P, ...). Eval files continue the shape draws after the train files (dlio.md §2, §9).

pub mod shapes;

use crate::config::{Compression, Config, Format};
use shapes::file_shapes;

/// Which split a file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Valid,
}

impl Split {
    /// The folder name under the data folder.
    pub fn folder(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Valid => "valid",
        }
    }
}

/// One dataset file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub split: Split,
    /// Index within its split.
    pub index: u64,
    /// Index in the whole dataset (train files, then valid files), as DLIO counts for striding and shapes.
    pub combined: u64,
    /// Key relative to the data folder, e.g. `train/1/img_3_of_8.npz`.
    pub key: String,
    /// Sample shape in elements: (d1, d2) drawn per file, or `dataset.record_dims`.
    pub shape: Vec<u64>,
    pub samples: u64,
}

/// The file extension: the format's name, plus `.gz`, `.bz2`, `.xz` or `.zip` for compressed csv (pandas' suffixes).
pub fn extension(config: &Config) -> String {
    let d = &config.dataset;
    match (d.format, d.compression) {
        (Format::Csv, Compression::Gzip) => "csv.gz".into(),
        (Format::Csv, Compression::Bz2) => "csv.bz2".into(),
        (Format::Csv, Compression::Xz) => "csv.xz".into(),
        (Format::Csv, Compression::Zip) => "csv.zip".into(),
        (format, _) => format.as_str().into(),
    }
}

/// The key of file `index` of `count` in a split.
pub fn file_key(split: Split, prefix: &str, index: u64, count: u64, subfolders: u64, ext: &str) -> String {
    let width = count.to_string().len();
    let name = format!("{prefix}_{index:0width$}_of_{count}.{ext}");
    if subfolders > 1 {
        let sub_width = subfolders.to_string().len();
        format!("{}/{:0sub_width$}/{name}", split.folder(), index % subfolders)
    } else {
        format!("{}/{name}", split.folder())
    }
}

/// The folders DLIO's generator creates (rank 0, before any file): `train/` and `valid/` whatever the file counts
/// (DLIO's training lists `valid/` even with no eval files), and each split's subfolders when it has more than one.
pub fn dataset_folders(config: &Config) -> Vec<String> {
    let d = &config.dataset;
    let mut folders = Vec::new();
    for (split, subfolders) in [(Split::Train, d.num_subfolders_train), (Split::Valid, d.num_subfolders_eval)] {
        folders.push(split.folder().to_string());
        if subfolders > 1 {
            let width = subfolders.to_string().len();
            folders.extend((0..subfolders).map(|i| format!("{}/{i:0width$}", split.folder())));
        }
    }
    folders
}

/// Every file of the dataset (train, then valid) that `rank` of `world_size` writes.
pub fn dataset_files(config: &Config, rank: u64, world_size: u64) -> Vec<FileSpec> {
    let d = &config.dataset;
    let ext = extension(config);
    let total = d.num_files_train + d.num_files_eval;
    let drawn = if d.record_dims.is_empty() {
        file_shapes(d.record_length_bytes, d.record_length_bytes_stdev, total)
    } else {
        Vec::new()
    };
    let shape_of = |k: u64| match drawn.get(usize::try_from(k).unwrap_or(usize::MAX)) {
        Some((a, b)) => vec![*a, *b],
        None => d.record_dims.clone(),
    };
    let splits = [
        (Split::Train, d.num_files_train, d.num_subfolders_train, 0),
        (Split::Valid, d.num_files_eval, d.num_subfolders_eval, d.num_files_train),
    ];
    let mut files = Vec::new();
    for (split, count, subfolders, shape_offset) in splits {
        // Ranks stride over the combined index: rank r writes k = r, r + P, ... (train then valid).
        let first = (rank + world_size.max(1) - shape_offset % world_size.max(1)) % world_size.max(1);
        for index in (first..count).step_by(usize::try_from(world_size.max(1)).unwrap_or(usize::MAX)) {
            files.push(FileSpec {
                split,
                index,
                combined: shape_offset + index,
                key: file_key(split, &d.file_prefix, index, count, subfolders, &ext),
                shape: shape_of(shape_offset + index),
                samples: d.num_samples_per_file,
            });
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_dlio() {
        assert_eq!(file_key(Split::Train, "img", 0, 16, 0, "npz"), "train/img_00_of_16.npz");
        assert_eq!(file_key(Split::Train, "img", 3, 8, 2, "hdf5"), "train/1/img_3_of_8.hdf5");
        assert_eq!(file_key(Split::Valid, "part", 7, 100, 12, "tfrecord"), "valid/07/part_007_of_100.tfrecord");
    }

    #[test]
    fn folders_are_dlios_whatever_the_file_counts() {
        let mut c = Config::default();
        c.dataset.num_files_eval = 0;
        assert_eq!(dataset_folders(&c), ["train", "valid"]);
        c.dataset.num_subfolders_train = 2;
        c.dataset.num_subfolders_eval = 10;
        let folders = dataset_folders(&c);
        assert_eq!(folders[..4], ["train", "train/0", "train/1", "valid"]);
        assert_eq!(folders[4..6], ["valid/00", "valid/01"]);
        assert_eq!(folders.len(), 14);
    }

    #[test]
    fn ranks_stride_and_eval_shapes_continue_after_train() {
        let mut c = Config::default();
        c.dataset.num_files_train = 5;
        c.dataset.num_files_eval = 2;
        c.dataset.record_length_bytes = 1_048_576.0;
        c.dataset.record_length_bytes_stdev = 262_144.0;
        let all = dataset_files(&c, 0, 1);
        assert_eq!(all.len(), 7);
        let shapes = file_shapes(1_048_576.0, 262_144.0, 7);
        assert_eq!(all.iter().map(|f| (f.shape[0], f.shape[1])).collect::<Vec<_>>(), shapes);
        assert_eq!(all[5].key, "valid/img_0_of_2.tfrecord");
        let rank1: Vec<u64> = dataset_files(&c, 1, 2).iter().map(|f| f.combined).collect();
        assert_eq!(rank1, vec![1, 3, 5], "combined indices 5 and 6 are valid files 0 and 1");
        assert_eq!(dataset_files(&c, 1, 2)[2].key, "valid/img_0_of_2.tfrecord");
    }
}
