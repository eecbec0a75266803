//! The shipped workloads load under --strict and reproduce their documented derived values.

use dl_driver_core::config::Distribution;
use dl_driver_core::config::{builtin_workload_names, load, Format, LoadOptions, Source};
use dl_driver_core::plan::{plan, Plan, Schedule};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn planned(name: &str, world: u64, overrides: &[&str]) -> Plan {
    let strict = LoadOptions { strict: true, ..LoadOptions::default() };
    let overrides: Vec<String> = overrides.iter().map(ToString::to_string).collect();
    let loaded = load(&Source::Name(name.into()), &overrides, &strict).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(loaded.warnings.is_empty(), "{name}: {:?}", loaded.warnings);
    plan(&loaded.config, &loaded.source_name, world).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_builtin_workload_loads_strictly_and_plans() {
    let names = builtin_workload_names();
    for expected in [
        "unet3d_a100",
        "unet3d_h100",
        "resnet50_a100",
        "resnet50_h100",
        "cosmoflow_a100",
        "cosmoflow_h100",
        "bert_v100",
        "llama_8b_zero3",
        "llama_70b",
        "llama_405b",
        "llama_1t",
        "default",
        "quickstart",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    for name in names {
        let world = match name {
            "llama_70b" => 64,
            "llama_405b" => 512,
            "llama_1t" => 1024,
            "llama_8b_zero3" => 8,
            _ => 1,
        };
        planned(name, world, &[]);
    }
}

#[test]
fn unet3d_h100() {
    let p = planned("unet3d_h100", 1, &[]);
    assert_eq!((p.train.files, p.train.steps_per_epoch, p.train.epochs), (168, 24, 5));
    assert_eq!(p.dataset.format, Format::Npz.to_string());
    assert_eq!(p.data_location, "data/unet3d");
    let c = p.checkpoint.expect("unet3d checkpoints");
    assert_eq!((c.trigger, c.epochs), ("epoch", Schedule { first: Some(5), every: 2, count: 1 }));
    assert_eq!(c.size.total_bytes, 499_153_191);
    let p8 = planned("unet3d_h100", 8, &[]);
    assert_eq!((p8.train.samples_per_rank, p8.train.steps_per_epoch), (21, 3));
}

#[test]
fn a100_variants_differ_only_in_compute_time() {
    for (a100, h100, a, h) in [
        ("unet3d_a100", "unet3d_h100", 0.636, 0.323),
        ("resnet50_a100", "resnet50_h100", 0.435, 0.224),
        ("cosmoflow_a100", "cosmoflow_h100", 0.00551, 0.00350),
    ] {
        let load_one = |name: &str| load(&Source::Name(name.into()), &[], &LoadOptions::default()).unwrap().config;
        let (mut ca, ch) = (load_one(a100), load_one(h100));
        assert_eq!(ca.train.computation_time, Distribution::Constant(a));
        assert_eq!(ch.train.computation_time, Distribution::Constant(h));
        assert_eq!(planned(a100, 1, &[]).train, planned(h100, 1, &[]).train);
        ca.train.computation_time = ch.train.computation_time;
        ca.reader.dont_use_mmap = ch.reader.dont_use_mmap;
        assert_eq!(ca, ch, "{a100} vs {h100}");
    }
    assert_eq!(planned("cosmoflow_a100", 1, &[]).train.samples, 524_288);
}

#[test]
fn default_and_quickstart() {
    let p = planned("default", 1, &[]);
    assert_eq!((p.train.files, p.train.subfolders, p.train.steps_per_epoch, p.train.epochs), (64, 2, 16, 10));
    assert_eq!((p.eval.files, p.eval.steps_per_epoch), (8, 8));
    assert_eq!(p.eval_epochs, Schedule { first: Some(1), every: 1, count: 10 });
    let q = planned("quickstart", 1, &[]);
    assert_eq!((q.train.samples, q.train.steps_per_epoch, q.train.epochs), (256, 32, 2));
    assert_eq!(q.phases, vec!["generate", "train", "evaluation"]);
    assert_eq!(q.data_location, "dl-driver-quickstart/data");
}

#[test]
fn resnet50_h100() {
    let p = planned("resnet50_h100", 1, &[]);
    assert_eq!((p.train.samples, p.train.steps_per_epoch), (1_281_024, 3202));
    assert_eq!(p.train.bytes, (1_281_024.0_f64 * 114_660.07).round() as u64);
    assert!(p.checkpoint.is_none());
}

#[test]
fn cosmoflow_and_bert() {
    let p = planned("cosmoflow_h100", 1, &[]);
    assert_eq!((p.train.samples, p.train.steps_per_epoch), (524_288, 524_288));
    let p = planned("bert_v100", 1, &[]);
    assert_eq!(p.train.steps_per_epoch, 1000, "capped by total_training_steps");
    let c = p.checkpoint.expect("bert checkpoints");
    assert_eq!((c.trigger, c.every_steps, c.writes), ("step", Some(250), 4));
}

#[test]
fn llama_checkpoint_sizes_follow_dlio_formula() {
    for (name, world, gib) in [
        ("llama_8b_zero3", 8, 104.70),
        ("llama_70b", 64, 911.21),
        ("llama_405b", 512, 5292.25),
        ("llama_1t", 1024, 15426.59),
    ] {
        let c = planned(name, world, &[]).checkpoint.expect("checkpoint-only workload");
        let size = c.size.total_bytes as f64 / GIB;
        assert!((size - gib).abs() / gib < 0.001, "{name}: {size} GiB vs {gib}");
        assert_eq!((c.trigger, c.writes, c.reads), ("checkpoint_only", 10, 10));
    }
    // llama3-8b at 8 processes is MLPerf's "105 GB" (GiB): within 1%.
    let c = planned("llama_8b_zero3", 8, &[]).checkpoint.unwrap();
    assert!((c.size_gib - 105.0).abs() / 105.0 < 0.01);
}

#[test]
fn overrides_change_the_plan() {
    let p = planned(
        "unet3d_h100",
        1,
        &["++workload.dataset.num_files_train=16", "workload.reader.batch_size=4", "++hydra.run.dir=/tmp/r"],
    );
    assert_eq!((p.train.files, p.train.steps_per_epoch), (16, 4));
    assert_eq!(p.output_folder, "/tmp/r");
}
