//! Helpers the ESMM and chain tests share.

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

/// Makes a tower's final Linear output the constant `bias` for every row.
pub fn constant_tower(tower: &mut mtl_layers::Mlp, bias: f32, device: &Device) {
    let out = tower.output.as_mut().unwrap();
    let [inp, _] = out.weight.shape().dims();
    out.weight = Param::from_tensor(Tensor::zeros([inp, 1], device));
    out.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(vec![bias], [1]),
        device,
    )));
}
