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

/// The checkpoint of one job: its rank layout and each writing rank's share.
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

/// Sizes the checkpoint `world_size` processes write.
pub fn checkpoint_size(config: &Config, world_size: u64) -> Result<CheckpointSize, (String, String)> {
    let shares = rank_shares(config, world_size)?;
    let par = &config.model.parallelism;
    let (tensor, pipeline, data) = layout(config, world_size)?;
    let model_bytes = shares.iter().map(|s| s.model_bytes).sum();
    let optimizer_bytes = shares.iter().map(|s| s.optimizer_bytes).sum();
    Ok(CheckpointSize {
        tensor,
        pipeline,
        data,
        zero_stage: par.zero_stage,
        parameters: if is_transformer(config) { transformer_parameters(config) } else { 0 },
        model_bytes,
        optimizer_bytes,
        total_bytes: model_bytes + optimizer_bytes,
        largest_rank_bytes: shares.iter().map(|s| s.total()).max().unwrap_or(0),
        ranks_writing: shares.iter().filter(|s| s.total() > 0).count() as u64,
    })
}

/// Each rank's share, for ranks `0..world_size`.
pub fn rank_shares(config: &Config, world_size: u64) -> Result<Vec<RankShare>, (String, String)> {
    if !is_transformer(config) {
        let m = &config.model;
        let per_writer = RankShare {
            model_bytes: m.model_size_bytes
                + u64::try_from(m.num_layers).unwrap_or(0).min(1)
                    * m.layer_parameters.iter().sum::<u64>()
                    * m.model_datatype.size(),
            optimizer_bytes: m.optimization_groups.iter().sum::<u64>() * m.optimizer_datatype.size(),
        };
        return Ok((0..world_size)
            .map(|r| match (config.checkpoint.location, r) {
                (CheckpointLocation::AllRanks, _) | (CheckpointLocation::RankZero, 0) => per_writer,
                _ => RankShare { model_bytes: 0, optimizer_bytes: 0 },
            })
            .collect());
    }
    let (tp, pp, dp) = layout(config, world_size)?;
    let m = &config.model;
    let t = &m.transformer;
    let h = t.hidden_size;
    let mp = tp * pp;
    let layers = u64::try_from(m.num_layers).unwrap_or(0);
    let params = transformer_parameters(config);
    let zero = m.parallelism.zero_stage;
    let n = if zero > 0 { params / (dp * mp) } else { params / mp };
    let optimizer_bytes = (3 * n + 15 * h) * m.optimizer_datatype.size();
    let (embedding, layer, final_norm) = per_tensor_rank(config, tp);
    Ok((0..world_size)
        .map(|rank| {
            let pp_rank = (rank / tp) % pp;
            let dp_rank = rank / mp;
            let stage_layers = layers / pp + u64::from(pp_rank < layers % pp);
            let mut stage = stage_layers * layer;
            if pp_rank == 0 {
                stage += embedding;
            }
            if pp_rank == pp - 1 {
                stage += final_norm + embedding;
            }
            let model_params = match (zero, dp_rank) {
                (3, _) => stage / dp,
                (_, 0) => stage,
                _ => 0,
            };
            RankShare { model_bytes: model_params * m.model_datatype.size(), optimizer_bytes }
        })
        .collect())
}

fn is_transformer(config: &Config) -> bool {
    config.model.model_type.as_deref() == Some("transformer")
}

/// (TP, PP, DP) for `world_size` processes, with DLIO's checks.
fn layout(config: &Config, world_size: u64) -> Result<(u64, u64, u64), (String, String)> {
    let par = &config.model.parallelism;
    let (tp, pp) = (par.tensor, par.pipeline);
    let mp = tp * pp;
    if !is_transformer(config) {
        return Ok((tp, pp, (world_size / mp).max(1)));
    }
    match config.checkpoint.mode {
        CheckpointMode::Default => {
            if par.data > 0 {
                return Err((
                    "model.parallelism.data".into(),
                    format!(
                        "is {} but must not be set in default checkpoint mode (it is the process count / (tensor * pipeline)); \
                         set checkpoint.mode: subset to write one node's share of a larger job",
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
            Ok((tp, pp, world_size / mp))
        }
        CheckpointMode::Subset => {
            let Ok(dp) = u64::try_from(par.data) else {
                return Err((
                    "model.parallelism.data".into(),
                    "subset checkpoint mode needs the target data parallelism (model.parallelism.data >= 1)".into(),
                ));
            };
            if dp * mp < world_size {
                return Err((
                    "model.parallelism.data".into(),
                    format!(
                        "{world_size} processes exceed data * tensor * pipeline = {dp} * {tp} * {pp} = {}",
                        dp * mp
                    ),
                ));
            }
            Ok((tp, pp, dp))
        }
    }
}

/// Parameters of the whole transformer (norms counted once).
pub fn transformer_parameters(config: &Config) -> u64 {
    let t = &config.model.transformer;
    let h = t.hidden_size;
    let kv_dim = (h / t.num_attention_heads.max(1)) * t.num_kv_heads;
    let layer = 2 * h + h * (h + 2 * kv_dim) + h * h + 3 * h * t.ffn_hidden_size;
    let layers = u64::try_from(config.model.num_layers).unwrap_or(0);
    2 * t.vocab_size * h + layers * layer + h
}

/// Parameters one tensor-parallel rank holds: (embedding or lm_head, one layer, final norm).
fn per_tensor_rank(config: &Config, tp: u64) -> (u64, u64, u64) {
    let t = &config.model.transformer;
    let h = t.hidden_size;
    let kv_dim = (h / t.num_attention_heads.max(1)) * t.num_kv_heads;
    let embedding = (t.vocab_size / tp) * h;
    let layer = 2 * h
        + (h / tp) * (h + 2 * kv_dim)
        + h * (h / tp)
        + h * (2 * t.ffn_hidden_size / tp)
        + (t.ffn_hidden_size / tp) * h;
    (embedding, layer, h)
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
        assert_eq!(transformer_parameters(&llama(4096, 32, 14336, 32, 8, 1, 1, 3)), 8_030_261_248);
    }

    #[test]
    fn zero1_writes_model_state_on_data_parallel_rank_zero_only() {
        let cfg = llama(4096, 32, 14336, 32, 8, 2, 1, 1);
        let shares = rank_shares(&cfg, 8).unwrap();
        assert!(shares[..2].iter().all(|s| s.model_bytes > 0));
        assert!(shares[2..].iter().all(|s| s.model_bytes == 0 && s.optimizer_bytes > 0));
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
