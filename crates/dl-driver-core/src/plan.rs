//! The derived plan of a workload for a number of processes: steps, samples per rank, dataset size, file counts,
//! evaluation and checkpoint schedules, checkpoint size (reference: dlio.md §3-§5).

use serde::Serialize;

use crate::checkpoint::sizing::{checkpoint_size, CheckpointSize};
use crate::config::{Config, ConfigError, DataLoader, Sampler};

/// What a run of this workload on `world_size` processes will do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub world_size: u64,
    pub data_location: String,
    pub checkpoint_location: String,
    pub output_folder: String,
    /// The phases that run, in order: generate, train, evaluation, checkpoint.
    pub phases: Vec<&'static str>,
    /// DLIO's derived sampler: iterative for the tensorflow loader, index for pytorch and dali.
    pub sampler: Option<Sampler>,
    pub train: PhasePlan,
    pub eval: PhasePlan,
    /// Epochs after which evaluation runs.
    pub eval_epochs: Schedule,
    pub dataset: DatasetPlan,
    pub checkpoint: Option<CheckpointPlan>,
}

/// Samples and steps of the training or evaluation phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhasePlan {
    pub files: u64,
    pub subfolders: u64,
    pub samples: u64,
    /// ceil(samples / processes): the most samples one rank owns.
    pub samples_per_rank: u64,
    pub batch_size: u64,
    /// floor(samples / batch / processes), capped by train.total_training_steps when > 0 (drop_last).
    pub steps_per_epoch: u64,
    pub epochs: u64,
    pub total_steps: u64,
    /// Nominal bytes: samples * record_length_bytes.
    pub bytes: u64,
}

/// Dataset totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetPlan {
    pub format: String,
    pub record_length_bytes: f64,
    pub samples_per_file: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Epochs `first, first + every, ...`, `count` of them (count 0: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub first: Option<u64>,
    pub every: u64,
    pub count: u64,
}

impl Schedule {
    /// Epochs e in 1..=epochs with e >= after and (e - after) a multiple of every.
    pub fn of(epochs: u64, after: u64, every: u64) -> Self {
        let every = every.max(1);
        let first = if after >= 1 { after } else { every };
        if first > epochs {
            return Self { first: None, every, count: 0 };
        }
        Self { first: Some(first), every, count: (epochs - first) / every + 1 }
    }

    /// Whether `epoch` is in the schedule.
    pub fn contains(&self, epoch: u64) -> bool {
        self.first.is_some_and(|f| {
            epoch >= f && (epoch - f).is_multiple_of(self.every) && (epoch - f) / self.every < self.count
        })
    }
}

/// When checkpoints happen and how big they are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointPlan {
    /// `epoch`, `step` or `checkpoint_only`.
    pub trigger: &'static str,
    /// Epoch mode: the epochs after which a checkpoint is written.
    pub epochs: Schedule,
    /// Step mode: the interval in global steps.
    pub every_steps: Option<u64>,
    pub writes: u64,
    pub reads: u64,
    pub size: CheckpointSize,
    pub size_gib: f64,
}

impl Plan {
    /// Before a run: a phase that runs with 0 steps per epoch would report AU 0 and throughput 0 (DLIO's "zero
    /// metrics" runs); an error naming files, samples, batch size and ranks. (Generation alone may write fewer
    /// samples than a batch: `plan` does not check this.)
    pub fn check_steps(&self, source_name: &str) -> Result<(), ConfigError> {
        let phases = [
            (&self.train, "training", "dataset.num_files_train", "reader.batch_size"),
            (&self.eval, "evaluation", "dataset.num_files_eval", "reader.batch_size_eval"),
        ];
        for (phase, what, path, batch_key) in phases {
            if phase.steps_per_epoch == 0 && phase.epochs > 0 {
                let (files, samples, batch, world) = (phase.files, phase.samples, phase.batch_size, self.world_size);
                return Err(ConfigError::invalid(
                    source_name,
                    path,
                    format!(
                        "{files} files x {} samples per file = {samples} {what} samples give 0 steps per epoch at \
                         {batch_key} {batch} over {world} rank(s) (steps = samples / batch size / ranks, rounded \
                         down); expected at least {} samples: add files or samples per file, lower {batch_key}, or \
                         run fewer ranks",
                        self.dataset.samples_per_file,
                        batch.saturating_mul(world)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Derives the plan; fails on rules that depend on the process count (e.g. processes vs model parallelism).
pub fn plan(config: &Config, source_name: &str, world_size: u64) -> Result<Plan, ConfigError> {
    let invalid = |path: &str, problem: String| ConfigError::invalid(source_name, path, problem);
    if world_size == 0 {
        return Err(invalid("(world size)", "got 0 processes, expected >= 1".into()));
    }
    let d = &config.dataset;
    let too_large =
        |path: &str| invalid(path, "the resulting sample, step or byte count does not fit in 64 bits".into());
    let phase = |files: u64, subfolders: u64, batch: u64, epochs: u64, cap: Option<u64>, path: &str| {
        let samples = files.checked_mul(d.num_samples_per_file).ok_or_else(|| too_large(path))?;
        let steps = samples / batch / world_size;
        let steps = cap.map_or(steps, |c| steps.min(c));
        let bytes = samples as f64 * d.record_length_bytes;
        if bytes >= 2f64.powi(64) {
            return Err(too_large("dataset.record_length_bytes"));
        }
        Ok(PhasePlan {
            files,
            subfolders: if subfolders > 1 { subfolders } else { 0 },
            samples,
            samples_per_rank: samples.div_ceil(world_size),
            batch_size: batch,
            steps_per_epoch: steps,
            epochs,
            total_steps: steps.checked_mul(epochs).ok_or_else(|| too_large("train.epochs"))?,
            bytes: bytes.round() as u64,
        })
    };
    let w = &config.workflow;
    let train_epochs = if w.train { config.train.epochs } else { 0 };
    let cap = u64::try_from(config.train.total_training_steps).ok().filter(|c| *c > 0);
    let train = phase(
        d.num_files_train,
        d.num_subfolders_train,
        config.reader.batch_size,
        train_epochs,
        cap,
        "dataset.num_files_train",
    )?;
    let ev = &config.evaluation;
    let eval_epochs = if w.evaluation && w.train {
        Schedule::of(train_epochs, ev.eval_after_epoch, ev.epochs_between_evals)
    } else {
        Schedule::of(0, 1, 1)
    };
    let eval = phase(
        d.num_files_eval,
        d.num_subfolders_eval,
        config.reader.batch_size_eval,
        eval_epochs.count,
        None,
        "dataset.num_files_eval",
    )?;
    crate::checkpoint::sizing::check_layout(config, world_size).map_err(|(path, why)| invalid(&path, why))?;
    let checkpoint = if w.checkpoint {
        let size = checkpoint_size(config, world_size).map_err(|(path, why)| invalid(&path, why))?;
        Some(checkpoint_plan(config, &train, size))
    } else {
        None
    };
    let phases = [
        (w.generate_data, "generate"),
        (w.train, "train"),
        (w.evaluation && w.train, "evaluation"),
        (w.checkpoint, "checkpoint"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let sampler = config.reader.data_loader_sampler.or(match config.reader.data_loader {
        DataLoader::Tensorflow => Some(Sampler::Iterative),
        DataLoader::Pytorch | DataLoader::Dali => Some(Sampler::Index),
        _ => None,
    });
    let location = |r: Result<crate::storage::StorageUri, String>, path: &str| {
        r.map(|u| u.to_string()).map_err(|why| invalid(path, why))
    };
    Ok(Plan {
        world_size,
        data_location: location(config.data_location(), "dataset.data_folder")?,
        checkpoint_location: location(config.checkpoint_location(), "checkpoint.checkpoint_folder")?,
        output_folder: config.output.folder.clone(),
        phases,
        sampler,
        dataset: DatasetPlan {
            format: config.dataset.format.to_string(),
            record_length_bytes: d.record_length_bytes,
            samples_per_file: d.num_samples_per_file,
            files: train.files + eval.files,
            bytes: train.bytes + eval.bytes,
        },
        train,
        eval,
        eval_epochs,
        checkpoint,
    })
}

fn checkpoint_plan(config: &Config, train: &PhasePlan, size: CheckpointSize) -> CheckpointPlan {
    let k = &config.checkpoint;
    let size_gib = size.total_bytes as f64 / f64::from(1u32 << 30);
    let reads = u64::try_from(k.num_checkpoints_read).unwrap_or(0);
    if !config.workflow.train {
        let writes = u64::try_from(k.num_checkpoints_write).unwrap_or(0);
        return CheckpointPlan {
            trigger: "checkpoint_only",
            epochs: Schedule::of(0, 1, 1),
            every_steps: None,
            writes,
            reads,
            size,
            size_gib,
        };
    }
    if let Ok(every) = u64::try_from(k.steps_between_checkpoints) {
        let writes = train.total_steps / every;
        return CheckpointPlan {
            trigger: "step",
            epochs: Schedule::of(0, 1, 1),
            every_steps: Some(every),
            writes,
            reads: 0,
            size,
            size_gib,
        };
    }
    let epochs = Schedule::of(train.epochs, k.checkpoint_after_epoch, k.epochs_between_checkpoints);
    CheckpointPlan { trigger: "epoch", writes: epochs.count, epochs, every_steps: None, reads: 0, size, size_gib }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, LoadOptions, Source};

    fn planned(yaml: &str, world: u64) -> Plan {
        let cfg = load(
            &Source::Tree { name: "t".into(), value: serde_yaml::from_str(yaml).unwrap() },
            &[],
            &LoadOptions::default(),
        )
        .unwrap()
        .config;
        plan(&cfg, "t", world).unwrap()
    }

    fn checked(yaml: &str, world: u64) -> Result<Plan, ConfigError> {
        let p = planned(yaml, world);
        p.check_steps("t").map(|()| p)
    }

    #[test]
    fn steps_drop_the_last_partial_batch_and_respect_the_cap() {
        let p = planned("dataset: {num_files_train: 10, num_samples_per_file: 3}\nreader: {batch_size: 4}", 2);
        assert_eq!((p.train.samples, p.train.samples_per_rank, p.train.steps_per_epoch), (30, 15, 3));
        let p = planned(
            "dataset: {num_files_train: 10}\nreader: {batch_size: 1}\ntrain: {total_training_steps: 4, epochs: 3}",
            1,
        );
        assert_eq!((p.train.steps_per_epoch, p.train.total_steps), (4, 12));
    }

    #[test]
    fn a_running_phase_without_a_step_is_an_error_naming_batch_samples_and_ranks() {
        let e = checked("dataset: {num_files_train: 8, num_samples_per_file: 4}\nreader: {batch_size: 64}", 1);
        let e = e.unwrap_err().to_string();
        for part in
            ["dataset.num_files_train", "32 training samples", "reader.batch_size 64", "1 rank(s)", "64 samples"]
        {
            assert!(e.contains(part), "{part} missing from: {e}");
        }
        // Generation alone plans it. Enough for one rank is too few for two; evaluation is checked when it runs.
        let generate =
            "dataset: {num_files_train: 2}\nreader: {batch_size: 4}\nworkflow: {generate_data: true, train: false}";
        assert!(checked(generate, 1).is_ok());
        let yaml = "dataset: {num_files_train: 8, num_samples_per_file: 8, num_files_eval: 1}\n";
        let one = format!("{yaml}reader: {{batch_size: 64}}");
        assert_eq!(checked(&one, 1).unwrap().train.steps_per_epoch, 1);
        assert!(checked(&one, 2).unwrap_err().to_string().contains("over 2 rank(s)"));
        let eval = format!("{yaml}workflow: {{evaluation: true}}\nreader: {{batch_size: 64, batch_size_eval: 16}}");
        let e = checked(&eval, 1).unwrap_err().to_string();
        assert!(e.contains("dataset.num_files_eval") && e.contains("reader.batch_size_eval 16"), "{e}");
    }

    #[test]
    fn uneven_samples_per_rank_round_up() {
        let p = planned("dataset: {num_files_train: 7}", 3);
        assert_eq!(p.train.samples_per_rank, 3);
        assert_eq!(p.train.steps_per_epoch, 2);
    }

    #[test]
    fn epoch_and_step_checkpoint_schedules() {
        let p = planned(
            "workflow: {checkpoint: True}\ntrain: {epochs: 9}\ncheckpoint: {checkpoint_after_epoch: 5, epochs_between_checkpoints: 2}",
            1,
        );
        let c = p.checkpoint.unwrap();
        assert_eq!((c.trigger, c.epochs, c.writes), ("epoch", Schedule { first: Some(5), every: 2, count: 3 }, 3));
        assert!(c.epochs.contains(7) && !c.epochs.contains(8) && !c.epochs.contains(11));
        let p = planned(
            "workflow: {checkpoint: True}\ndataset: {num_files_train: 100}\ntrain: {epochs: 2}\ncheckpoint: {steps_between_checkpoints: 30}",
            1,
        );
        let c = p.checkpoint.unwrap();
        assert_eq!((c.trigger, c.every_steps, c.writes), ("step", Some(30), 6));
    }

    #[test]
    fn eval_schedule_and_steps() {
        let p = planned(
            "workflow: {evaluation: True}\ndataset: {num_files_eval: 8}\nreader: {batch_size_eval: 2}\ntrain: {epochs: 5}\n\
             evaluation: {eval_after_epoch: 2, epochs_between_evals: 2}",
            2,
        );
        assert_eq!(p.eval_epochs, Schedule { first: Some(2), every: 2, count: 2 });
        assert_eq!(p.eval.steps_per_epoch, 2);
        assert_eq!(p.phases, vec!["train", "evaluation"]);
    }

    #[test]
    fn huge_values_are_errors_not_overflows() {
        let cfg = load(
            &Source::Tree {
                name: "t".into(),
                value: serde_yaml::from_str("dataset: {num_files_train: 9223372036854775807, num_samples_per_file: 4}")
                    .unwrap(),
            },
            &[],
            &LoadOptions::default(),
        )
        .unwrap()
        .config;
        let e = plan(&cfg, "t", 1).unwrap_err().to_string();
        assert!(e.contains("dataset.num_files_train") && e.contains("64 bits"), "{e}");
        let p = planned(
            "train: {epochs: 1000000000}\nworkflow: {checkpoint: True, evaluation: True}\ndataset: {num_files_eval: 1}",
            1,
        );
        assert_eq!(p.checkpoint.unwrap().epochs.count, 1_000_000_000, "schedules are described, not listed");
    }

    #[test]
    fn storage_block_becomes_a_uri() {
        let p = planned("storage: {storage_type: s3, storage_root: my-bucket}\ndataset: {data_folder: data/unet3d}", 1);
        assert_eq!(p.data_location, "s3://my-bucket/data/unet3d");
        let p = planned("dataset: {data_folder: az://ctr/x}\nstorage: {storage_type: s3, storage_root: bkt}", 1);
        assert_eq!(p.data_location, "az://ctr/x");
    }
}
