//! PEPNet: the forward pass against its equations, the gates' range and identity start, the
//! parameter count against TorchEasyRec's modules, config errors, label priors.

use burn::tensor::{Device, Tensor};
use mtl_features::{Encoder, StateFitter};
use mtl_layers::{ModelBuilder, MultiTaskModel, trainable_params};
use mtl_mmoe::{Pepnet, PepnetConfig};

mod common;

use common::{data, schema};

fn config(extra: &str) -> PepnetConfig {
    toml::from_str(&format!(
        "epnet = {{ gate_fields = [\"u\"] }}\nppnet = {{ gate_fields = [\"i\", \"x\"], dims = [6, 3], batch_norm = false }}\ntower = {{ dims = [] }}\ntasks = [{{ label = \"click\" }}, {{ label = \"dwell\" }}]\n{extra}"
    ))
    .unwrap()
}

fn build(c: &PepnetConfig, device: &Device) -> (Pepnet, Encoder) {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    (c.init(&s, enc.layout(), device).unwrap(), enc)
}

fn v<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Every gate's output layer drawn at random (they start at zero), so that the gates matter.
fn randomised(mut m: Pepnet, device: &Device) -> Pepnet {
    let random = |l: &mut burn::nn::Linear| {
        let [i, o] = l.weight.dims();
        let w = Tensor::<2>::random([i, o], burn::tensor::Distribution::Normal(0.0, 1.0), device);
        l.weight = l.weight.clone().map(|_| w);
    };
    random(&mut m.epnet.as_mut().unwrap().gate.output);
    for net in &mut m.ppnet.as_mut().unwrap().nets {
        net.gates.iter_mut().for_each(|g| random(&mut g.output));
    }
    m
}

#[test]
fn the_forward_pass_is_the_papers_equations() {
    let device = Device::flex();
    device.seed(11);
    let (m, enc) = build(&config(""), &device);
    let m = randomised(m, &device);
    let batch = data(9).batch(&(0..9).collect::<Vec<_>>(), enc.layout(), &device);
    // by hand: x from the input layer; e_u = x[0..4], e_i = x[4..8], x_dense = x[8..9]
    let x = m.input.forward(&batch);
    let col = |a: usize, b: usize| x.clone().slice([0..9, a..b]);
    let gate = |g: &mtl_mmoe::GateNu, z: Tensor<2>| {
        let h = g.hidden.forward(z).clamp_min(0.0);
        g.output
            .forward(h)
            .neg()
            .exp()
            .add_scalar(1.0)
            .recip()
            .mul_scalar(g.gamma)
    };
    let x1 = gate(
        &m.epnet.as_ref().unwrap().gate,
        Tensor::cat(vec![col(0, 4), x.clone()], 1),
    ) * x.clone();
    let uia = Tensor::cat(vec![col(4, 8), col(8, 9)], 1);
    let gate_input = Tensor::cat(vec![uia, x1.clone()], 1);
    let logits = m.logits(&batch);
    for (t, net) in m.ppnet.as_ref().unwrap().nets.iter().enumerate() {
        let mut a = x1.clone();
        for (block, g) in net.blocks.iter().zip(&net.gates) {
            a = block.linear.forward(a).clamp_min(0.0) * gate(g, gate_input.clone());
        }
        let expected = v(m.towers[t].forward(a, None).reshape([9]));
        let got = v(logits[t].clone());
        for (e, g) in expected.iter().zip(&got) {
            assert!((e - g).abs() < 1e-5, "task {t}: {expected:?} vs {got:?}");
        }
    }
    // the prediction heads: a probability for the click, the value for the dwell
    let p = m.predict(&batch);
    assert!(v(p[0].clone()).iter().all(|x| *x > 0.0 && *x < 1.0));
    assert_eq!(v(p[1].clone()), v(logits[1].clone()));
}

#[test]
fn gates_lie_in_zero_to_gamma_and_start_as_the_identity() {
    let device = Device::flex();
    device.seed(3);
    let (m, enc) = build(&config(""), &device);
    let batch = data(16).batch(&(0..16).collect::<Vec<_>>(), enc.layout(), &device);
    let z = Tensor::<2>::random([16, 13], burn::tensor::Distribution::Normal(0.0, 3.0), &device);
    // at init every gate is σ(0) · 2 = 1 exactly: PEPNet starts as the plain network
    let g = m.epnet.as_ref().unwrap().gate.forward(z.clone());
    assert!(v(g).iter().all(|&x| x == 1.0));
    let plain = {
        let x = m.input.forward(&batch);
        let net = &m.ppnet.as_ref().unwrap().nets[0];
        let a = net
            .blocks
            .iter()
            .fold(x, |a, b| b.linear.forward(a).clamp_min(0.0));
        v(m.towers[0].forward(a, None).reshape([16]))
    };
    assert_eq!(v(m.logits(&batch)[0].clone()), plain);
    // trained (random) gates stay inside (0, γ), here with γ = 3, and use the range
    let (m, _) = build(&config("").with_gammas(3.0), &device);
    let m = randomised(m, &device);
    let g = v(m.epnet.as_ref().unwrap().gate.forward(z.mul_scalar(10.0)));
    assert!(g.iter().all(|x| (0.0..=3.0).contains(x)), "{g:?}");
    assert!(g.iter().any(|&x| x < 0.3) && g.iter().any(|&x| x > 2.7), "{g:?}");
}

trait Gammas {
    fn with_gammas(self, gamma: f64) -> Self;
}

impl Gammas for PepnetConfig {
    fn with_gammas(mut self, gamma: f64) -> Self {
        self.epnet.as_mut().unwrap().gamma = gamma;
        self.ppnet.as_mut().unwrap().gamma = gamma;
        self
    }
}

#[test]
fn the_parameter_count_is_torcheasyrecs() {
    // tzrec/modules/personalized_net.py: GateNU(i, h, o) = Linear(i, h) + Linear(h, o);
    // EPNet(main M, domain D, hidden H) = GateNU(D + M, H, M); PPNet(M, uia U, units h_j) per
    // task and layer = Linear(h_{j−1}, h_j) + GateNU(M + U, h_j, h_j); TaskTower without an MLP
    // = Linear(h_L, 1). Here M = 2 · 4 + 1 (two id fields of width 4, one dense).
    let linear = |i: usize, o: usize| i * o + o;
    let gate_nu = |i: usize, h: usize, o: usize| linear(i, h) + linear(h, o);
    let (m_, d, u) = (9, 4, 4 + 1);
    let embeddings = (20 + 30) * 4;
    let epnet = |hidden: usize| gate_nu(d + m_, hidden, m_);
    let ppnet_task = linear(m_, 6) + gate_nu(m_ + u, 6, 6) + linear(6, 3) + gate_nu(m_ + u, 3, 3);
    let towers = 2 * linear(3, 1);
    let (m, _) = build(&config(""), &Device::flex());
    assert_eq!(
        trainable_params(&m),
        embeddings + epnet(m_) + 2 * ppnet_task + towers
    );
    // epnet_hidden_unit given; PPNet alone (towers read the input's width without it)
    let mut c = config("");
    c.epnet.as_mut().unwrap().hidden = Some(5);
    let (m, _) = build(&c, &Device::flex());
    assert_eq!(
        trainable_params(&m),
        embeddings + epnet(5) + 2 * ppnet_task + towers
    );
    let mut c = config("");
    c.ppnet = None;
    let (m, _) = build(&c, &Device::flex());
    assert_eq!(trainable_params(&m), embeddings + epnet(m_) + 2 * linear(m_, 1));
    // mtl's default: each PPNet layer with BatchNorm, its scale and shift 2 per unit
    let mut c = config("");
    c.ppnet.as_mut().unwrap().batch_norm = true;
    let (m, _) = build(&c, &Device::flex());
    let norms = 2 * (2 * 6 + 2 * 3);
    assert_eq!(
        trainable_params(&m),
        embeddings + epnet(m_) + 2 * ppnet_task + towers + norms
    );
}

#[test]
fn config_errors_name_the_key() {
    let s = schema();
    let err = |c: PepnetConfig| c.plan(&s).unwrap_err().to_string();
    let mut c = config("");
    c.ppnet.as_mut().unwrap().gate_fields[1] = "dwell".into();
    let e = err(c);
    assert!(
        e.contains("model.ppnet.gate_fields") && e.contains("dwell"),
        "{e}"
    );
    let mut c = config("");
    c.epnet.as_mut().unwrap().gate_fields = vec!["u".into(), "u".into()];
    let e = err(c);
    assert!(
        e.contains("model.epnet.gate_fields") && e.contains("twice"),
        "{e}"
    );
    let e = err(config("").with_gammas(0.0));
    assert!(e.contains("model.epnet.gamma"), "{e}");
    let mut c = config("");
    c.ppnet.as_mut().unwrap().dims = vec![];
    assert!(err(c).contains("model.ppnet.dims"));
    let mut c = config("");
    (c.epnet, c.ppnet) = (None, None);
    assert!(err(c).contains("epnet"));
    let e = toml::from_str::<PepnetConfig>("tower = { dims = [] }\nepnet = { fields = [\"u\"] }\ntasks = []")
        .unwrap_err()
        .to_string();
    assert!(e.contains("fields"), "{e}");
}

#[test]
fn label_priors_start_every_task_at_its_labels_base_rate() {
    let device = Device::flex().autodiff();
    let (m, enc) = build(&config(""), &device);
    let m = m.with_label_priors(&[0.2, 3.5]);
    let bias = |k: usize| {
        f64::from(
            v(m.towers[k]
                .mlp
                .output
                .as_ref()
                .unwrap()
                .bias
                .as_ref()
                .unwrap()
                .val())[0],
        )
    };
    assert!((bias(0) - (0.2f64 / 0.8).ln()).abs() < 1e-6, "{}", bias(0));
    assert!((bias(1) - 3.5).abs() < 1e-6, "{}", bias(1));
    // and it trains: one loss term per task, finite
    let batch = data(8).batch(&(0..8).collect::<Vec<_>>(), enc.layout(), &device);
    let f = m.forward(&batch);
    assert_eq!(f.losses.len(), 2);
    assert!(f.losses.iter().all(|l| v(l.clone())[0].is_finite()));
}
