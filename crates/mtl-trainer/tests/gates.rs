//! The gate-utilisation report on constructed gates: one expert forced dominant (the others
//! reported dead, entropy near 0), and a uniform gate (entropy exactly ln n).

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use mtl_eval::gates::{GateReport, dead_experts, gate_report};
use mtl_features::{EncodedData, Encoder, Schema, StateFitter};
use mtl_layers::MlpSpec;
use mtl_layers::ModelBuilder;
use mtl_mmoe::{MmoeConfig, TaskConfig};

fn data(rows: usize) -> EncodedData {
    EncodedData {
        rows,
        n_sparse: 1,
        seq_max_len: vec![],
        n_dense: 0,
        n_labels: 2,
        sparse: (0..rows).map(|r| (r % 10) as u32).collect(),
        sequence: vec![],
        seq_len: vec![],
        dense: vec![],
        labels: (0..rows).flat_map(|r| [f32::from(r % 2 == 0), 0.0]).collect(),
    }
}

/// An MMOE with three experts whose gates ignore the input: softmax of `bias`.
fn report(bias: [f32; 3]) -> Vec<GateReport> {
    let s = Schema::from_toml_str(
        "embed_dim = 4\n[[sparse]]\nname = \"u\"\nvocab_size = 10\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"buy\"\nkind = \"binary\"\n",
        "s.toml",
    )
    .unwrap();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let device = Device::flex();
    let mut config = MmoeConfig::new(
        3,
        MlpSpec::new([4]),
        MlpSpec::new([2]),
        vec![TaskConfig::new("click"), TaskConfig::new("buy")],
    );
    config.gate_batch_norm = false;
    let mut model = config.init(&s, enc.layout(), &device).unwrap();
    for gate in &mut model.gates {
        let linear = &mut gate.blocks[0].linear;
        linear.weight = Param::from_tensor(Tensor::zeros([4, 3], &device));
        linear.bias = Some(Param::from_tensor(Tensor::from_floats(bias, &device)));
    }
    gate_report(&model, &data(5000), enc.layout(), &device).unwrap()
}

#[test]
fn a_dominant_expert_leaves_the_others_dead() {
    let reports = report([20.0, 0.0, 0.0]);
    assert_eq!(reports.len(), 2, "one gate per task");
    for r in &reports {
        assert_eq!(r.rows, 5000);
        assert_eq!(r.experts, ["expert0", "expert1", "expert2"]);
        assert!(r.mean_weight[0] > 0.999_999, "{:?}", r.mean_weight);
        assert!(r.entropy < 1e-6, "{}", r.entropy);
    }
    assert_eq!(
        (reports[0].gate.as_str(), reports[1].gate.as_str()),
        ("click", "buy")
    );
    assert_eq!(dead_experts(&reports), ["expert1", "expert2"]);
}

#[test]
fn a_uniform_gate_has_entropy_ln_n_and_no_dead_expert() {
    let reports = report([0.0, 0.0, 0.0]);
    for r in &reports {
        for w in &r.mean_weight {
            assert!((w - 1.0 / 3.0).abs() < 1e-6, "{:?}", r.mean_weight);
        }
        assert!((r.entropy - 3f64.ln()).abs() < 1e-5, "{}", r.entropy);
    }
    assert!(dead_experts(&reports).is_empty());
}

#[test]
fn an_expert_is_dead_only_when_every_gate_that_sees_it_ignores_it() {
    let gate = |name: &str, experts: &[&str], w: &[f64]| GateReport {
        gate: name.into(),
        experts: experts.iter().map(|e| e.to_string()).collect(),
        mean_weight: w.to_vec(),
        entropy: 0.0,
        rows: 1,
    };
    // PLE-like: the shared expert is ignored by one task's gate but used by the other's
    let reports = [
        gate("level1.a", &["a0", "shared0"], &[0.995, 0.005]),
        gate("level1.b", &["b0", "shared0"], &[0.6, 0.4]),
        gate("level1.c", &["c0", "shared0"], &[0.004, 0.996]),
        // attention over vectors is not a mixture: never reported
        gate("b<-a", &["own", "transferred"], &[1.0, 0.0]),
    ];
    assert_eq!(dead_experts(&reports), ["c0"]);
}
