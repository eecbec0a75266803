//! Checkpoint sizes the DLIO way: a simple model of `model_size_bytes`, or a transformer sized from its shape with
//! tensor, pipeline and data parallelism and a ZeRO stage (reference: dlio.md §5).
//!
//! Transformer parameters: embedding + L * (2 norms + qkv + dense + 3 mlp) + final norm + lm_head, with
//! `kv_dim = (hidden / heads) * kv_heads` (integer head size, as DLIO computes it). Tensor parallelism splits every
//! matrix by TP and replicates the norm vectors; pipeline parallelism splits layers over stages (the lowest stages
//! take the remainder; stage 0 holds the embedding, the last stage the final norm and lm_head). Model state is in
//! `model_datatype`; optimizer state is `[n, 5h, n, 5h, n, 5h]` elements of `optimizer_datatype` per rank with
//! `n = params / (DP * MP)` when ZeRO > 0, else `params / MP`. ZeRO-3 shards model state over DP; other stages
//! write model state from data-parallel rank 0 only.

use serde::Serialize;

use crate::config::{CheckpointLocation, CheckpointMode, Config};

/// What one rank writes per checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RankShare {
    pub model_bytes: u64,
    pub optimizer_bytes: u64,
}

impl RankShare {
    pub fn total(self) -> u64 {
        self.model_bytes + self.optimizer_bytes
    }
}

/// The checkpoint of one job: its rank layout and totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointSize {
    pub tensor: u64,
    pub pipeline: u64,
    pub data: u64,
    pub zero_stage: u64,
    /// Parameters of the whole model (transformer) or 0 for a simple model.
    pub parameters: u64,
    pub model_bytes: u64,
    pub optimizer_bytes: u64,
    pub total_bytes: u64,
    pub largest_rank_bytes: u64,
    pub ranks_writing: u64,
}

/// A problem with the layout: (key path, what is wrong).
pub type LayoutError = (String, String);

fn too_large(what: &str) -> LayoutError {
    ("model".into(), format!("the {what} does not fit in 64 bits: the model or the process count is too large"))
}

fn fit(value: u128, what: &str) -> Result<u64, LayoutError> {
    u64::try_from(value).map_err(|_| too_large(what))
}

/// Sizes the checkpoint `world_size` processes write (totals computed per pipeline stage, not per rank, so any
/// process count is cheap).
pub fn checkpoint_size(config: &Config, world_size: u64) -> Result<CheckpointSize, LayoutError> {
    let layout = Layout::new(config, world_size)?;
    let (tp, pp) = (u128::from(layout.tensor), u128::from(layout.pipeline));
    let mp = tp * pp;
    let world = u128::from(world_size);
    let optimizer_per_rank = layout.optimizer_bytes_per_rank(config);
    let writers = if layout.transformer || config.checkpoint.location == CheckpointLocation::AllRanks {
        world
    } else {
        world.min(1)
    };
    let mut model = 0u128;
    let mut largest = 0u128;
    if !layout.transformer {
        // A simple model: every writer holds the model (and the layers of the first, fullest stage).
        largest = layout.stage_model_bytes(config, 0);
        model = writers * largest;
    }
    for stage in (0..layout.pipeline).filter(|_| layout.transformer) {
        let first = u128::from(stage) * tp;
        // Ranks of this stage (tp fastest, then pp, then dp) among ranks 0..world, and those with dp rank 0.
        let in_stage = (world / mp) * tp + (world % mp).saturating_sub(first).min(tp);
        let on_dp0 = world.saturating_sub(first).min(tp);
        let per_rank = layout.stage_model_bytes(config, stage);
        let (writers, bytes) =
            if layout.zero_stage == 3 { (in_stage, per_rank / u128::from(layout.data)) } else { (on_dp0, per_rank) };
        model += writers * bytes;
        if writers > 0 {
            largest = largest.max(bytes);
        }
    }
    let optimizer = optimizer_per_rank * writers;
    Ok(CheckpointSize {
        tensor: layout.tensor,
        pipeline: layout.pipeline,
        data: layout.data,
        zero_stage: layout.zero_stage,
        parameters: if layout.transformer { fit(transformer_parameters(config), "parameter count")? } else { 0 },
        model_bytes: fit(model, "model size")?,
        optimizer_bytes: fit(optimizer, "optimizer size")?,
        total_bytes: fit(model + optimizer, "checkpoint size")?,
        largest_rank_bytes: fit(largest + optimizer_per_rank, "largest rank's share")?,
        ranks_writing: fit(writers, "rank count")?,
    })
}

/// DLIO's rules for `world_size` processes against tensor, pipeline and data parallelism (checked for every
/// workload, as DLIO does).
pub fn check_layout(config: &Config, world_size: u64) -> Result<(), LayoutError> {
    Layout::new(config, world_size).map(drop)
}

/// What rank `rank` of `world_size` writes.
pub fn rank_share(config: &Config, world_size: u64, rank: u64) -> Result<RankShare, LayoutError> {
    let layout = Layout::new(config, world_size)?;
    let (tp, mp) = (layout.tensor, layout.tensor * layout.pipeline);
    let stage = (rank / tp) % layout.pipeline;
    let dp_rank = rank / mp;
    let writes = layout.transformer || config.checkpoint.location == CheckpointLocation::AllRanks || rank == 0;
    let stage_bytes = layout.stage_model_bytes(config, stage);
    let model = match (writes, layout.zero_stage, dp_rank) {
        (true, 3, _) => stage_bytes / u128::from(layout.data),
        (true, _, 0) => stage_bytes,
        _ => 0,
    };
    let optimizer = if writes { layout.optimizer_bytes_per_rank(config) } else { 0 };
    Ok(RankShare { model_bytes: fit(model, "model share")?, optimizer_bytes: fit(optimizer, "optimizer share")? })
}

/// One file of a rank's checkpoint shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardFile {
    pub name: String,
    pub bytes: u64,
}

/// The files rank `rank` writes into a checkpoint folder, with DLIO's (DeepSpeed-style) names (dlio.md §5):
/// a simple model writes `model_states-{rank}.pt`; a transformer under ZeRO 1/2 writes model state from
/// data-parallel rank 0 only, one `layer_{i}-model_{mp}_model_states.pt` per layer of its stage when pipelined, else
/// `model_{mp}_model_states.pt`; under ZeRO 0/3 `zero_pp_rank_{dp}_mp_rank_{mp}_model_states.pt`; and every writing
/// rank writes `zero_pp_rank_{dp}_mp_rank_{mp}_optim_states.pt`. The sizes add up to [`rank_share`].
pub fn rank_files(config: &Config, world_size: u64, rank: u64) -> Result<Vec<ShardFile>, LayoutError> {
    let share = rank_share(config, world_size, rank)?;
    let layout = Layout::new(config, world_size)?;
    let mp_size = layout.tensor * layout.pipeline;
    let (mp, dp) = (rank % mp_size, rank / mp_size);
    let mut files = Vec::new();
    if share.model_bytes > 0 {
        if !layout.transformer {
            files.push(ShardFile { name: format!("model_states-{rank}.pt"), bytes: share.model_bytes });
        } else if layout.zero_stage == 3 || layout.zero_stage == 0 {
            files.push(ShardFile {
                name: format!("zero_pp_rank_{dp}_mp_rank_{mp}_model_states.pt"),
                bytes: share.model_bytes,
            });
        } else if layout.pipeline > 1 {
            files.extend(layer_files(config, &layout, rank, mp)?);
        } else {
            files.push(ShardFile { name: format!("model_{mp}_model_states.pt"), bytes: share.model_bytes });
        }
    }
    if share.optimizer_bytes > 0 {
        files.push(ShardFile {
            name: format!("zero_pp_rank_{dp}_mp_rank_{mp}_optim_states.pt"),
            bytes: share.optimizer_bytes,
        });
    }
    Ok(files)
}

/// Per-layer model files of a pipelined ZeRO 1/2 rank: each layer's tensor-parallel share, the embedding with the
/// stage's first layer (stage 0), the final norm and lm_head with its last (last stage).
fn layer_files(config: &Config, layout: &Layout, rank: u64, mp: u64) -> Result<Vec<ShardFile>, LayoutError> {
    let stage = (rank / layout.tensor) % layout.pipeline;
    let first: u128 = (0..stage).map(|s| layout.stage_layers(config, s)).sum();
    let layers = layout.stage_layers(config, stage);
    let shapes = Shapes::of(config);
    let tp = u128::from(layout.tensor);
    let dtype = u128::from(config.model.model_datatype.size());
    let mut sizes: Vec<u128> = (0..layers).map(|_| shapes.layer_per_tensor_rank(tp) * dtype).collect();
    if let (Some(head), true) = (sizes.first_mut(), stage == 0) {
        *head += shapes.embedding / tp * dtype;
    }
    if let (Some(tail), true) = (sizes.last_mut(), stage == layout.pipeline - 1) {
        *tail += (shapes.hidden + shapes.embedding / tp) * dtype;
    }
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            Ok(ShardFile {
                name: format!("layer_{}-model_{mp}_model_states.pt", first + i as u128),
                bytes: fit(bytes, "layer size")?,
            })
        })
        .collect()
}

/// Tensor, pipeline and data parallel degrees with DLIO's checks.
struct Layout {
    tensor: u64,
    pipeline: u64,
    data: u64,
    zero_stage: u64,
    transformer: bool,
}

impl Layout {
    fn new(config: &Config, world_size: u64) -> Result<Self, LayoutError> {
        let par = &config.model.parallelism;
        let (tp, pp) = (par.tensor, par.pipeline);
        let mp = tp.checked_mul(pp).ok_or_else(|| too_large("tensor * pipeline degree"))?;
        let transformer = config.model.model_type.as_deref() == Some("transformer");
        let data = match config.checkpoint.mode {
            CheckpointMode::Default => {
                if par.data > 0 {
                    return Err((
                        "model.parallelism.data".into(),
                        format!(
                            "is {} but must not be set in default checkpoint mode (it is the process count / \
                             (tensor * pipeline)); set checkpoint.mode: subset to write one node's share of a larger job",
                            par.data
                        ),
                    ));
                }
                if !world_size.is_multiple_of(mp) {
                    return Err((
                        "model.parallelism".into(),
                        format!("{world_size} processes are not a multiple of tensor * pipeline = {tp} * {pp} = {mp}"),
                    ));
                }
                world_size / mp
            }
            CheckpointMode::Subset => {
                let Ok(dp) = u64::try_from(par.data) else {
                    return Err((
                        "model.parallelism.data".into(),
                        "subset checkpoint mode needs the target data parallelism (model.parallelism.data >= 1)".into(),
                    ));
                };
                if u128::from(dp) * u128::from(mp) < u128::from(world_size) {
                    return Err((
                        "model.parallelism.data".into(),
                        format!("{world_size} processes exceed data * tensor * pipeline = {dp} * {tp} * {pp}"),
                    ));
                }
                dp
            }
        };
        Ok(Self { tensor: tp, pipeline: pp, data: data.max(1), zero_stage: par.zero_stage, transformer })
    }

    /// Layers held by pipeline stage `stage` (the lowest stages take the remainder).
    fn stage_layers(&self, config: &Config, stage: u64) -> u128 {
        let layers = u64::try_from(config.model.num_layers).unwrap_or(0);
        u128::from(layers / self.pipeline + u64::from(stage < layers % self.pipeline))
    }

    /// Model-state bytes one tensor-parallel rank of `stage` holds (before ZeRO-3 sharding).
    fn stage_model_bytes(&self, config: &Config, stage: u64) -> u128 {
        let m = &config.model;
        let dtype = u128::from(m.model_datatype.size());
        let layers = self.stage_layers(config, stage);
        if !self.transformer {
            let per_layer = u128::from(m.layer_parameters.iter().sum::<u64>()) / u128::from(self.tensor);
            return u128::from(m.model_size_bytes) + layers * per_layer * dtype;
        }
        let shapes = Shapes::of(config);
        let tp = u128::from(self.tensor);
        let mut params = layers * shapes.layer_per_tensor_rank(tp);
        if stage == 0 {
            params += shapes.embedding / tp;
        }
        if stage == self.pipeline - 1 {
            params += shapes.hidden + shapes.embedding / tp;
        }
        params * dtype
    }

    /// Optimizer-state bytes of every rank: `[n, 5h, n, 5h, n, 5h]` elements (transformer), or DLIO's int8
    /// optimizer groups three times over (simple model).
    fn optimizer_bytes_per_rank(&self, config: &Config) -> u128 {
        let m = &config.model;
        if !self.transformer {
            return 3 * m.optimization_groups.iter().map(|g| u128::from(*g)).sum::<u128>();
        }
        let mp = u128::from(self.tensor) * u128::from(self.pipeline);
        let params = transformer_parameters(config);
        let n = if self.zero_stage > 0 { params / (u128::from(self.data) * mp) } else { params / mp };
        (3 * n + 15 * u128::from(m.transformer.hidden_size)) * u128::from(m.optimizer_datatype.size())
    }
}

/// Parameter counts of a transformer's parts.
struct Shapes {
    hidden: u128,
    /// One embedding (or lm_head) matrix.
    embedding: u128,
    /// The two norm vectors of a layer (replicated on every tensor-parallel rank).
    norms: u128,
    /// A layer's matrices (split by tensor parallelism): qkv, dense, the three MLP matrices.
    matrices: u128,
}

impl Shapes {
    fn of(config: &Config) -> Self {
        let t = &config.model.transformer;
        let h = u128::from(t.hidden_size);
        let kv_dim = (h / u128::from(t.num_attention_heads.max(1))) * u128::from(t.num_kv_heads);
        let ffn = u128::from(t.ffn_hidden_size);
        Self {
            hidden: h,
            embedding: u128::from(t.vocab_size) * h,
            norms: 2 * h,
            matrices: h * (h + 2 * kv_dim) + h * h + 3 * h * ffn,
        }
    }

    fn layer_per_tensor_rank(&self, tp: u128) -> u128 {
        self.norms + self.matrices / tp
    }
}

/// Parameters of the whole transformer (norms counted once).
pub fn transformer_parameters(config: &Config) -> u128 {
    let s = Shapes::of(config);
    let layers = u128::from(u64::try_from(config.model.num_layers).unwrap_or(0));
    2 * s.embedding + layers * (s.norms + s.matrices) + s.hidden
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, LoadOptions, Source};

    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

    #[allow(clippy::too_many_arguments)]
    fn llama(h: u64, layers: i64, ffn: u64, heads: u64, kv: u64, tp: u64, pp: u64, zero: u64) -> Config {
        let mut c = Config::default();
        c.model.model_type = Some("transformer".into());
        c.model.num_layers = layers;
        c.model.transformer.hidden_size = h;
        c.model.transformer.ffn_hidden_size = ffn;
        c.model.transformer.num_attention_heads = heads;
        c.model.transformer.num_kv_heads = kv;
        c.model.transformer.vocab_size = 128_256;
        c.model.parallelism.tensor = tp;
        c.model.parallelism.pipeline = pp;
        c.model.parallelism.zero_stage = zero;
        c
    }

    fn gib(bytes: u64) -> f64 {
        bytes as f64 / GIB
    }

    #[test]
    fn rank_files_have_deepspeed_names_and_add_up_to_the_share() {
        // 405b layout scaled down: TP 2, PP 4, ZeRO 1, on 16 processes (DP 2).
        let cfg = llama(512, 10, 1024, 8, 2, 2, 4, 1);
        let mut total = 0;
        for rank in 0..16 {
            let files = rank_files(&cfg, 16, rank).unwrap();
            let share = rank_share(&cfg, 16, rank).unwrap();
            assert_eq!(files.iter().map(|f| f.bytes).sum::<u64>(), share.total(), "rank {rank}");
            total += share.total();
            let (mp, dp) = (rank % 8, rank / 8);
            assert_eq!(files.last().unwrap().name, format!("zero_pp_rank_{dp}_mp_rank_{mp}_optim_states.pt"));
            if dp == 0 {
                // Stage (rank / 2) % 4 holds layers 3,3,2,2: stage 0 -> layer_0..2, stage 3 -> layer_8..9.
                let stage = (rank / 2) % 4;
                let expected: Vec<String> = match stage {
                    0 => (0..3).collect::<Vec<_>>(),
                    1 => (3..6).collect(),
                    2 => (6..8).collect(),
                    _ => (8..10).collect(),
                }
                .into_iter()
                .map(|i| format!("layer_{i}-model_{mp}_model_states.pt"))
                .collect();
                assert_eq!(files[..files.len() - 1].iter().map(|f| f.name.clone()).collect::<Vec<_>>(), expected);
            } else {
                assert_eq!(files.len(), 1, "ZeRO-1 writes model state from data-parallel rank 0 only");
            }
        }
        assert_eq!(total, checkpoint_size(&cfg, 16).unwrap().total_bytes);
        let zero3 = llama(512, 4, 1024, 8, 2, 1, 1, 3);
        let names: Vec<String> = rank_files(&zero3, 2, 1).unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["zero_pp_rank_1_mp_rank_0_model_states.pt", "zero_pp_rank_1_mp_rank_0_optim_states.pt"]);
        let mut simple = Config::default();
        simple.model.model_size_bytes = 1000;
        let names: Vec<String> = rank_files(&simple, 1, 0).unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["model_states-0.pt"]);
    }

    #[test]
    fn matches_dlio_formula_for_the_mlperf_llama_models() {
        // (config, processes, model GiB, optimizer GiB, total GiB) from dlio.md §5.
        let cases = [
            (llama(4096, 32, 14336, 32, 8, 1, 1, 3), 8, 14.96, 89.75, 104.70),
            (llama(8192, 80, 28672, 128, 8, 8, 1, 3), 64, 130.18, 781.03, 911.21),
            (llama(16384, 126, 53248, 128, 8, 8, 32, 1), 512, 756.01, 4536.23, 5292.25),
            (llama(25872, 128, 98304, 192, 32, 8, 64, 1), 1024, 2203.66, 13222.93, 15426.59),
        ];
        for (cfg, world, model, optimizer, total) in cases {
            let s = checkpoint_size(&cfg, world).unwrap();
            assert!((gib(s.model_bytes) - model).abs() < 0.01, "model {} vs {model}", gib(s.model_bytes));
            assert!(
                (gib(s.optimizer_bytes) - optimizer).abs() < 0.01,
                "optimizer {} vs {optimizer}",
                gib(s.optimizer_bytes)
            );
            assert!((gib(s.total_bytes) - total).abs() < 0.01, "total {} vs {total}", gib(s.total_bytes));
        }
        assert_eq!(transformer_parameters(&llama(4096, 32, 14336, 32, 8, 1, 1, 3)), 8_030_261_248u128);
    }

    #[test]
    fn zero1_writes_model_state_on_data_parallel_rank_zero_only() {
        let cfg = llama(4096, 32, 14336, 32, 8, 2, 1, 1);
        let shares: Vec<RankShare> = (0..8).map(|r| rank_share(&cfg, 8, r).unwrap()).collect();
        assert!(shares[..2].iter().all(|s| s.model_bytes > 0));
        assert!(shares[2..].iter().all(|s| s.model_bytes == 0 && s.optimizer_bytes > 0));
        let total = checkpoint_size(&cfg, 8).unwrap().total_bytes;
        assert_eq!(shares.iter().map(|s| s.total()).sum::<u64>(), total, "per-rank shares add up to the total");
    }

    #[test]
    fn huge_values_are_errors_not_overflows() {
        // The largest shape validation allows: the sizes are computed exactly and reported as too large for u64.
        let cfg = llama(1 << 24, 1 << 20, 1 << 24, 1 << 16, 1 << 16, 1, 1, 3);
        let (_, why) = checkpoint_size(&cfg, 8).unwrap_err();
        assert!(why.contains("too large"), "{why}");
        let small = llama(4096, 32, 14336, 32, 8, 1, 1, 3);
        assert_eq!(checkpoint_size(&small, 1 << 40).unwrap().ranks_writing, 1 << 40, "no per-rank allocation");
    }

    #[test]
    fn enforces_dlio_layout_rules() {
        let cfg = llama(8192, 80, 28672, 128, 8, 8, 1, 3);
        let (path, why) = checkpoint_size(&cfg, 12).unwrap_err();
        assert_eq!(path, "model.parallelism");
        assert!(why.contains("12 processes") && why.contains('8'), "{why}");
        let mut subset = cfg.clone();
        subset.checkpoint.mode = CheckpointMode::Subset;
        assert!(checkpoint_size(&subset, 8).unwrap_err().0.contains("data"));
        subset.model.parallelism.data = 8;
        let s = checkpoint_size(&subset, 8).unwrap();
        // MLPerf's subset table: llama3-70b on 8 processes writes 114 GiB.
        assert!((gib(s.total_bytes) - 114.0).abs() < 0.5, "{}", gib(s.total_bytes));
    }

    #[test]
    fn simple_models_write_from_rank_zero_or_all_ranks() {
        let cfg = load(
            &Source::Tree {
                name: "t".into(),
                value: serde_yaml::from_str("model: {model_size_bytes: 1000}\ncheckpoint: {type: all_ranks}").unwrap(),
            },
            &[],
            &LoadOptions::default(),
        )
        .unwrap()
        .config;
        assert_eq!(checkpoint_size(&cfg, 4).unwrap().total_bytes, 4000);
        let mut zero = cfg;
        zero.checkpoint.location = CheckpointLocation::RankZero;
        let s = checkpoint_size(&zero, 4).unwrap();
        assert_eq!((s.total_bytes, s.ranks_writing), (1000, 1));
    }
}
