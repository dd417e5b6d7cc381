//! PLE / CGC: torch-rechub's parameter counts, gates that are distributions, the MMOE
//! equivalence, and its config checks.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use mtl_features::{EncodedData, Encoder, Schema, StateFitter, ValidSchema};
use mtl_layers::ModelBuilder;
use mtl_layers::{MlpSpec, MultiTaskModel, trainable_params};
use mtl_mmoe::{ExtractionLayer, MmoeConfig, Ple, PleConfig, TaskConfig};

/// Three fields of ten ids, embed 4: the configuration counted in torch-rechub below.
fn schema() -> ValidSchema {
    let mut text = String::from("embed_dim = 4\nembed_init_std = 0.5\n");
    for k in 0..3 {
        text += &format!("[[sparse]]\nname = \"f{k}\"\nvocab_size = 10\n");
    }
    text += "[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n";
    Schema::from_toml_str(&text, "t.toml").unwrap()
}

fn data(rows: usize) -> EncodedData {
    EncodedData {
        rows,
        n_sparse: 3,
        seq_max_len: vec![],
        n_dense: 0,
        n_labels: 2,
        sparse: (0..rows)
            .flat_map(|r| [(r % 10) as u32, (r * 3 % 10) as u32, (r * 7 % 10) as u32])
            .collect(),
        sequence: vec![],
        seq_len: vec![],
        dense: vec![],
        labels: (0..rows)
            .flat_map(|r| [f32::from(r % 2 == 0), f32::from(r % 4 == 0)])
            .collect(),
    }
}

fn config(n_level: usize, n_expert_specific: usize, n_expert_shared: usize) -> PleConfig {
    PleConfig {
        n_level,
        n_expert_specific,
        n_expert_shared,
        expert: MlpSpec::new([8, 4]),
        tower: MlpSpec::new([3]).into(),
        tasks: vec![TaskConfig::new("click"), TaskConfig::new("purchase")],
        gate_batch_norm: true,
        pooling: Default::default(),
    }
}

fn build(c: &PleConfig, device: &Device) -> (Ple, Encoder) {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    (c.init(&s, enc.layout(), device).unwrap(), enc)
}

/// torch-rechub's MLP block: per hidden layer a Linear and BatchNorm's weight and bias.
fn mlp(input: usize, dims: &[usize]) -> usize {
    let mut width = input;
    let mut n = 0;
    for &d in dims {
        n += width * d + d + 2 * d;
        width = d;
    }
    n
}

/// PLE's trainable parameters as torch-rechub builds it (experts task-major, a gate per task
/// over its own and the shared experts, a shared gate over all experts on every level but the
/// last, towers ending in one Linear output).
fn ple_params(n_level: usize, spec: usize, shared: usize, tasks: usize) -> usize {
    let (fields, vocab, embed, expert, tower) = (3, 10, 4, [8, 4], [3]);
    let mut n = fields * vocab * embed;
    let mut width = fields * embed;
    for level in 0..n_level {
        n += (tasks * spec + shared) * mlp(width, &expert);
        n += tasks * mlp(width, &[spec + shared]);
        if level + 1 < n_level {
            n += mlp(width, &[tasks * spec + shared]);
        }
        width = expert[1];
    }
    n + tasks * (mlp(width, &tower) + tower[0] + 1)
}

#[test]
fn parameter_counts_match_torch_rechub() {
    // torch-rechub 0.9.0's `PLE(...)` on these features reports 1080, 1697, 1888 and 752
    // parameters for the four configurations (counted with its model's `parameters()`)
    for ((level, spec, shared), rechub) in [
        ((1, 2, 1), 1080),
        ((2, 2, 1), 1697),
        ((3, 1, 2), 1888),
        ((1, 0, 3), 752),
    ] {
        let (model, _) = build(&config(level, spec, shared), &Device::flex());
        let formula = ple_params(level, spec, shared, 2);
        assert_eq!(formula, rechub, "formula for {level}/{spec}/{shared}");
        assert_eq!(
            trainable_params(&model),
            formula,
            "{level} levels, {spec} specific, {shared} shared"
        );
    }
}

#[test]
fn every_gate_is_a_distribution_over_the_experts_it_sees() {
    let device = Device::flex();
    let (model, enc) = build(&config(3, 2, 1), &device);
    let d = data(16);
    let batch = d.batch(&(0..16).collect::<Vec<_>>(), enc.layout(), &device);
    let (logits, gates) = model.valid().forward_with_gates(&batch);
    assert_eq!(logits.len(), 2);
    assert_eq!(gates.len(), 3);
    for (level, g) in gates.iter().enumerate() {
        // two task gates over 2 + 1 experts, and a shared gate over 2·2 + 1 on all but the last
        let widths: Vec<usize> = g.iter().map(|t| t.dims()[1]).collect();
        let expect = if level < 2 { vec![3, 3, 5] } else { vec![3, 3] };
        assert_eq!(widths, expect, "level {level}");
        for t in g {
            let sums = t.clone().sum_dim(1).into_data().try_to_vec::<f32>().unwrap();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
            let w = t.clone().into_data().try_to_vec::<f32>().unwrap();
            assert!(w.iter().all(|x| *x >= 0.0));
        }
    }
}

#[test]
fn cgc_without_specific_experts_is_mmoe_with_the_same_weights() {
    let device = Device::flex();
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let mmoe = MmoeConfig::new(
        3,
        MlpSpec::new([8, 4]),
        MlpSpec::new([3]),
        vec![TaskConfig::new("click"), TaskConfig::new("purchase")],
    )
    .init(&s, enc.layout(), &device)
    .unwrap();
    let (ple, _) = build(&config(1, 0, 3), &device);
    // the same modules in PLE's places: its level is MMOE's experts and gates
    let ple = Ple {
        input: mmoe.input.clone(),
        levels: vec![ExtractionLayer {
            specific: vec![],
            shared: Some(mmoe.experts.clone()),
            gates: mmoe.gates.clone(),
            shared_gate: None,
        }],
        towers: mmoe.towers.clone(),
        tasks: ple.tasks,
        plan: ple.plan,
    };
    let d = data(24);
    let batch = d.batch(&(0..24).collect::<Vec<_>>(), enc.layout(), &device);
    let flat = |ts: Vec<Tensor<1>>| -> Vec<f32> {
        ts.into_iter()
            .flat_map(|t| t.into_data().try_to_vec::<f32>().unwrap())
            .collect()
    };
    let (a, b) = (
        flat(mmoe.valid().predict(&batch)),
        flat(ple.valid().predict(&batch)),
    );
    assert_eq!(a.len(), 48);
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-6, "PLE differs from MMOE by {diff}");
    assert_eq!(trainable_params(&mmoe), trainable_params(&ple));
}

#[test]
fn impossible_ple_configs_are_named() {
    let s = schema();
    for (c, key) in [
        (config(0, 1, 1), "model.n_level"),
        (config(1, 0, 0), "model.n_expert_shared"),
        (config(1, 5000, 1), "model.n_expert_specific"),
        (
            PleConfig {
                expert: MlpSpec::new([]),
                ..config(1, 1, 1)
            },
            "model.expert.dims",
        ),
    ] {
        let err = c.plan(&s).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn the_first_levels_experts_as_one_mixture_equal_the_separate_products() {
    // every task's own experts and the shared ones on the same input: one fused first layer
    // and one batched product per later layer give each group's own outputs (1e-6), with
    // BatchNorm at the batch's statistics (training) and at the running ones (evaluation)
    let device = Device::flex().autodiff();
    device.seed(9);
    for (spec, shared) in [(2, 1), (0, 3), (3, 0), (1, 2)] {
        let mut c = config(2, spec, shared);
        c.expert = MlpSpec::new([8, 6, 4]);
        let (ple, enc) = build(&c, &device);
        let batch = data(24).batch(&(0..24).collect::<Vec<_>>(), enc.layout(), &device);
        let x = ple.input.forward(&batch);
        let paths = vec![x; 3];
        let level = &ple.levels[0];
        let values = |ts: Vec<Tensor<2>>| -> Vec<f32> {
            ts.into_iter()
                .flat_map(|t| t.into_data().try_to_vec::<f32>().unwrap())
                .collect()
        };
        let (one, gates_one) = level.forward_one_input(&paths);
        let (apart, gates_apart) = level.forward(&paths);
        let plain = level.valid();
        let valid_paths: Vec<Tensor<2>> = paths.iter().map(|p| p.clone().inner()).collect();
        let (one_eval, _) = plain.forward_one_input(&valid_paths);
        let (apart_eval, _) = plain.forward(&valid_paths);
        for (what, a, b) in [
            ("outputs", values(one), values(apart)),
            ("gates", values(gates_one), values(gates_apart)),
            ("outputs, evaluation", values(one_eval), values(apart_eval)),
        ] {
            assert_eq!(a.len(), b.len());
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff <= 1e-6,
                "{spec} specific, {shared} shared: {what} differ by {diff}"
            );
        }
    }
}
