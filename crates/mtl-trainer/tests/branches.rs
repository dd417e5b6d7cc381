//! A step's passes cut at the model's branches (`fit::branches`) against one pass over the
//! whole graph: the same loss terms, gradients and BatchNorm statistics, bit for bit (within
//! 1e-6 where the head reads the trunk too: MMOE, PLE), one branch after another and side by
//! side on two threads; and training on two threads (the
//! branches side by side, the optimisers' steps beside each other) against one.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use mtl_esmm::{Esmm, EsmmConfig};
use mtl_features::{BackendKind, BatchTensors, EncodedData, Encoder, Schema, StateFitter, ValidSchema};
use mtl_layers::{MlpSpec, ModelBuilder, MultiTaskModel, trainable_params};
use mtl_mmoe::{Aitm, AitmConfig, Mmoe, MmoeConfig, Ple, PleConfig};
use mtl_trainer::TrainSettings;
use mtl_trainer::fit::state::{FitOptions, TrainState};
use mtl_trainer::fit::{branches, fit, optimizer, step};

const SCHEMA: &str = "embed_dim = 16\nembed_init_std = 0.3\n[[sparse]]\nname = \"a\"\nvocab_size = 50\n[[sparse]]\nname = \"b\"\nvocab_size = 40\n[[sparse]]\nname = \"c\"\nvocab_size = 30\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"cart\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n";

/// `rows` rows whose ids and labels follow simple patterns (a funnel: a purchase only after
/// a cart, a cart only after a click).
fn data(rows: usize) -> EncodedData {
    EncodedData {
        rows,
        n_sparse: 3,
        n_labels: 3,
        sparse: (0..rows)
            .flat_map(|r| [(r * 7 % 50) as u32, (r * 3 % 40) as u32, (r % 30) as u32])
            .collect(),
        labels: (0..rows)
            .flat_map(|r| {
                [
                    f32::from(r % 3 == 0),
                    f32::from(r % 9 == 0),
                    f32::from(r % 27 == 0),
                ]
            })
            .collect(),
        ..Default::default()
    }
}

/// Every parameter's gradient in `grads`, flattened, in the module's order.
struct Collect<'a> {
    grads: &'a GradientsParams,
    out: Vec<Option<Vec<f32>>>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let g = self.grads.get::<D>(param.id);
        self.out
            .push(g.map(|g| g.into_data().try_to_vec::<f32>().unwrap()));
    }
}

fn collect<M: Module>(model: &M, grads: &GradientsParams) -> Vec<Option<Vec<f32>>> {
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

/// Every float the module holds (parameters and running statistics), in its order.
struct Values(Vec<Vec<f32>>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().into_data().try_to_vec::<f32>().unwrap());
    }
}

fn values<M: Module>(model: &M) -> Vec<Vec<f32>> {
    let mut v = Values(Vec::new());
    model.visit(&mut v);
    v.0
}

/// The indices at which two lists of tensors differ.
fn differing(a: &[Vec<f32>], b: &[Vec<f32>]) -> Vec<usize> {
    (0..a.len().max(b.len()))
        .filter(|&i| a.get(i) != b.get(i))
        .collect()
}

/// A step's loss terms and every parameter's gradient (none where it has none).
type Passes = (Vec<f32>, Vec<Option<Vec<f32>>>);

/// The loss terms and every parameter's gradient: `cut` none for one pass over the whole
/// graph, else the cut passes with the branches side by side or not.
fn passes<M: MultiTaskModel>(model: &M, batch: &BatchTensors, cut: Option<bool>) -> Passes {
    let (forward, cut) = match cut {
        None => (model.forward(batch), None),
        Some(side_by_side) => {
            let (f, c) = branches::forward(model, batch, side_by_side).unwrap();
            (f, Some(c))
        }
    };
    let terms = Tensor::cat(forward.losses.clone(), 0)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let weights: Vec<f32> = (0..terms.len()).map(|i| 0.7 + 0.3 * i as f32).collect();
    let loss = forward.total_loss(&weights);
    let grads = match cut {
        None => GradientsParams::from_grads(loss.backward(), model),
        Some(cut) => {
            let (trunk, rest) = branches::backward(cut, loss);
            branches::params(trunk.into_iter().chain(rest).collect(), model)
        }
    };
    (terms, collect(model, &grads))
}

fn schema() -> ValidSchema {
    Schema::from_toml_str(SCHEMA, "s.toml").unwrap()
}

/// A model of `config`, its parameters drawn from seed 7.
fn build<M: MultiTaskModel>(config: impl ModelBuilder<Model = M>, device: &Device) -> M {
    // the tests of this file run on threads of one process, whose random stream is one
    static DRAWING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = DRAWING.lock().unwrap_or_else(|e| e.into_inner());
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    device.seed(7);
    let model = config.init(&s, enc.layout(), device).unwrap();
    values(&model);
    model
}

/// ESMM with wide BatchNorm towers (their products run on several threads).
fn esmm(device: &Device) -> Esmm {
    build(
        EsmmConfig::new(MlpSpec::new([512, 128]), MlpSpec::new([512, 128])),
        device,
    )
}

/// AITM over three tasks: three bottoms, and the transfers and the calibrator in the head.
fn aitm(device: &Device) -> Aitm {
    let config: AitmConfig = toml::from_str(
        "bottom = { dims = [256, 128] }\ntower = { dims = [16] }\n\
         tasks = [{ label = \"click\" }, { label = \"cart\" }, { label = \"purchase\" }]",
    )
    .unwrap();
    build(config, device)
}

/// MMOE over three tasks with six experts in three groups: the groups are the branches, the
/// gates (which read the trunk's output too), the mixing and the towers the head.
fn mmoe(device: &Device) -> Mmoe {
    let config: MmoeConfig = toml::from_str(
        "n_experts = 6\nexpert_groups = 3\nexpert = { dims = [256, 64] }\ntower = { dims = [16] }\n\
         tasks = [{ label = \"click\" }, { label = \"cart\" }, { label = \"purchase\" }]",
    )
    .unwrap();
    build(config, device)
}

/// PLE over three tasks, two levels: the first level's groups (each task's two experts, the two
/// shared ones) are the branches; the gates, the second level and the towers the head.
fn ple(device: &Device) -> Ple {
    let config: PleConfig = toml::from_str(
        "n_level = 2\nn_expert_specific = 2\nn_expert_shared = 2\nexpert = { dims = [256, 64] }\n\
         tower = { dims = [16] }\n\
         tasks = [{ label = \"click\" }, { label = \"cart\" }, { label = \"purchase\" }]",
    )
    .unwrap();
    build(config, device)
}

/// A batch of 1024 rows.
fn batch(device: &Device) -> BatchTensors {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let d = data(1024);
    d.batch(&(0..d.rows).collect::<Vec<_>>(), enc.layout(), device)
}

#[test]
fn cut_passes_give_the_whole_graphs_loss_and_gradients_bit_for_bit() {
    let device = Device::flex().autodiff();
    let b = batch(&device);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    // `exact`: the cut gives the whole graph's floats; else (MMOE and PLE, whose gates read
    // the trunk's output in the head: its gradient's terms meet in another order) within 1e-6
    // of them, the cut side by side still the cut one branch after another's bit for bit
    let check = |name: &str, whole: Passes, cut: &(dyn Fn(bool) -> Passes + Sync), exact: bool| {
        let with_grads = whole.1.iter().filter(|g| g.is_some()).count();
        assert!(
            with_grads > 10,
            "{name}: the branches' and the table's parameters have gradients: {with_grads}"
        );
        let after = cut(false);
        if !exact {
            assert_eq!(after.0, whole.0, "{name}: loss terms");
            for (i, (a, g)) in after.1.iter().zip(&whole.1).enumerate() {
                let (Some(a), Some(g)) = (a, g) else {
                    assert_eq!(
                        a, g,
                        "{name}: parameter {i} has a gradient on both sides or neither"
                    );
                    continue;
                };
                let scale = g.iter().fold(0f32, |m, x| m.max(x.abs()));
                let gap = a.iter().zip(g).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(gap <= 1e-6 * scale, "{name}: parameter {i}: {gap} of {scale}");
            }
        }
        let want = match exact {
            true => whole,
            false => after.clone(),
        };
        assert_eq!(after, want, "{name}: one branch after another");
        for round in 0..4 {
            let side = pool.install(|| cut(true));
            assert_eq!(side.0, want.0, "{name}: loss terms, side by side, round {round}");
            for (i, (a, g)) in side.1.iter().zip(&want.1).enumerate() {
                assert_eq!(
                    a, g,
                    "{name}: parameter {i}'s gradient, side by side, round {round}"
                );
            }
        }
    };
    let m = esmm(&device);
    check("ESMM", passes(&m, &b, None), &|s| passes(&m, &b, Some(s)), true);
    let m = aitm(&device);
    check("AITM", passes(&m, &b, None), &|s| passes(&m, &b, Some(s)), true);
    let m = mmoe(&device);
    check("MMOE", passes(&m, &b, None), &|s| passes(&m, &b, Some(s)), false);
    let m = ple(&device);
    check("PLE", passes(&m, &b, None), &|s| passes(&m, &b, Some(s)), false);
}

#[test]
fn side_by_side_branches_keep_batchnorms_running_statistics() {
    // three forward passes update every BatchNorm's running statistics three times: whole,
    // cut one branch after another, or cut side by side on two threads — each round in
    // another pool, so on other threads than the round before — the statistics the model
    // ends with are the same
    let pools: Vec<_> = (0..2)
        .map(|_| rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap())
        .collect();
    let rounds = |cut: Option<bool>| {
        let device = Device::flex().autodiff();
        let (model, b) = (esmm(&device), batch(&device));
        for round in 0..3 {
            match cut {
                Some(true) => pools[round % 2].install(|| passes(&model, &b, cut)),
                _ => passes(&model, &b, cut),
            };
        }
        values(&model.valid())
    };
    let whole = rounds(None);
    let start = values(&esmm(&Device::flex().autodiff()).valid());
    let moved = differing(&whole, &start);
    assert!(moved.len() >= 8, "the running statistics moved: {moved:?}");
    assert_eq!(
        differing(&rounds(Some(false)), &whole),
        Vec::<usize>::new(),
        "one branch after another"
    );
    for round in 0..3 {
        assert_eq!(
            differing(&rounds(Some(true)), &whole),
            Vec::<usize>::new(),
            "side by side, try {round}"
        );
    }
}

/// `model` (on `kind`'s device) trained 2 epochs of batch 256 over 1024 rows on a rayon pool
/// of `threads` threads: every float it ends with.
fn trained<M: MultiTaskModel + Send>(
    model: M,
    kind: BackendKind,
    threads: usize,
    out: &std::path::Path,
) -> Vec<Vec<f32>> {
    let run = || {
        let s = schema();
        let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
        let d = data(1024);
        let settings = TrainSettings {
            epochs: 2,
            batch_size: 256,
            lr: 0.01,
            ..TrainSettings::default()
        };
        let options = FitOptions {
            out_dir: out.to_path_buf(),
            label_names: s.label_names(),
            ..FitOptions::default()
        };
        let (layout, device) = (enc.layout(), kind.device().unwrap().autodiff());
        let r = fit(
            model,
            optimizer(&settings),
            &d,
            None,
            layout,
            &settings,
            &device,
            &options,
            TrainState::default(),
        );
        let r = r.unwrap();
        assert_eq!(r.state.global_step, 8);
        values(&r.model.valid())
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(run)
}

#[test]
fn two_threads_train_the_model_one_thread_trains() {
    // the defaults (row-sparse table, catch-up, the weight average); on two threads ESMM's
    // towers, AITM's bottoms, MMOE's groups of experts and PLE's first level's take their
    // passes side by side (all worth it), and ESMM's
    // dense optimiser its step beside the table's (enough dense parameters)
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex().autodiff();
    assert!(branches::worth_side_by_side(&esmm(&device)));
    assert!(branches::worth_side_by_side(&aitm(&device)));
    assert!(branches::worth_side_by_side(&mmoe(&device)));
    assert!(branches::worth_side_by_side(&ple(&device)));
    let m = esmm(&device);
    let dense = trainable_params(&m) - m.input_layer().embedding.weight.shape().num_elements();
    assert!(
        dense >= step::OPTIMISERS_BESIDE_PARAMS,
        "{dense} dense parameters"
    );
    let small = build(
        EsmmConfig::new(MlpSpec::new([16, 8]), MlpSpec::new([16, 8])),
        &device,
    );
    assert!(
        !branches::worth_side_by_side(&small),
        "towers of 16 and 8 are not worth a thread each"
    );
    let start = values(&esmm(&device).valid());
    let one = same_on_two_threads(esmm, "ESMM", dir.path());
    assert!(
        differing(&one, &start).len() > 10,
        "training moved the parameters"
    );
    same_on_two_threads(aitm, "AITM", dir.path());
    same_on_two_threads(mmoe, "MMOE", dir.path());
    same_on_two_threads(ple, "PLE", dir.path());
}

/// `make`'s model trained on one thread and on two ([`trained`]): the same floats, which it
/// returns.
fn same_on_two_threads<M: MultiTaskModel + Send>(
    make: fn(&Device) -> M,
    name: &str,
    dir: &std::path::Path,
) -> Vec<Vec<f32>> {
    let device = Device::flex().autodiff();
    let one = trained(
        make(&device),
        BackendKind::Flex,
        1,
        &dir.join(format!("{name}-1")),
    );
    let two = trained(
        make(&device),
        BackendKind::Flex,
        2,
        &dir.join(format!("{name}-2")),
    );
    assert_eq!(differing(&two, &one), Vec::<usize>::new(), "{name}");
    one
}

#[test]
fn two_threads_on_ndarray_train_the_model_one_thread_trains() {
    // the other CPU backend (when compiled in, as in the README's test command) runs the
    // branches side by side too
    if !BackendKind::Ndarray.is_compiled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = BackendKind::Ndarray.device().unwrap().autodiff();
    assert!(BackendKind::is_host_device(&device.clone().without_autodiff()));
    let kind = BackendKind::Ndarray;
    let one = trained(esmm(&device), kind, 1, &dir.path().join("1"));
    let two = trained(esmm(&device), kind, 2, &dir.path().join("2"));
    assert_eq!(differing(&two, &one), Vec::<usize>::new());
}

#[test]
fn models_whose_towers_read_the_field_embeddings_do_not_cut() {
    // a DeepFM tower also reads the field embeddings the input is made of: cut, their
    // gradient's terms would meet in another order than in one pass (the last bits differ),
    // so such a model takes one pass — on any number of threads
    let device = Device::flex().autodiff();
    let b = batch(&device);
    let mut tower: mtl_layers::TowerSpec = MlpSpec::new([512, 128]).into();
    tower.kind = mtl_layers::TowerKind::Deepfm;
    let m = build(EsmmConfig::new(tower.clone(), MlpSpec::new([512, 128])), &device);
    assert!(m.branching().is_none() && !branches::worth_side_by_side(&m));
    assert!(branches::forward(&m, &b, true).is_none());
    let config: AitmConfig = toml::from_str(
        "bottom = { dims = [256, 128] }\ntower = { dims = [16], kind = \"deepfm\" }\n\
         tasks = [{ label = \"click\" }, { label = \"cart\" }]",
    )
    .unwrap();
    assert!(build(config, &device).branching().is_none());
    let config: MmoeConfig = toml::from_str(
        "n_experts = 4\nexpert_groups = 2\nexpert = { dims = [256] }\n\
         tower = { dims = [16], kind = \"deepfm\" }\ntasks = [{ label = \"click\" }]",
    )
    .unwrap();
    assert!(build(config, &device).branching().is_none());
    assert!(esmm(&device).branching().is_some() && aitm(&device).branching().is_some());
    assert!(mmoe(&device).branching().is_some() && ple(&device).branching().is_some());
}

#[test]
fn the_passes_are_cut_on_one_thread_only_where_one_pass_would_differ() {
    use branches::Branches::{Cut, SideBySide, Whole};
    let device = Device::flex().autodiff();
    let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
    let (one, two) = (pool(1), pool(2));
    let (e, m) = (esmm(&device), mmoe(&device));
    // ESMM's one pass is its cut's floats: cut only to run side by side
    assert_eq!(one.install(|| branches::Branches::of(&e, true, false)), Whole);
    assert_eq!(
        two.install(|| branches::Branches::of(&e, true, false)),
        SideBySide
    );
    // MMOE's and PLE's gates read the trunk's output in the head: cut on one thread as well
    assert_eq!(one.install(|| branches::Branches::of(&m, true, false)), Cut);
    assert_eq!(
        one.install(|| branches::Branches::of(&ple(&device), true, false)),
        Cut
    );
    assert_eq!(
        two.install(|| branches::Branches::of(&m, true, false)),
        SideBySide
    );
    // dropout (draws at random) or a device that is not the CPU: one pass
    for (host, random) in [(true, true), (false, false)] {
        for p in [&one, &two] {
            assert_eq!(p.install(|| branches::Branches::of(&m, host, random)), Whole);
        }
    }
}
