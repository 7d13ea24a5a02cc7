//! `bundle create --quantize int8`: an f32 ONNX classifier rewritten with
//! int8 weights, one scale per output channel.
//!
//! Each weight of a `MatMul` (its columns), `Gemm` (by `transB`) or `Conv`
//! (its output channels) that is an f32 initializer of rank 2 or more, used
//! by that node only, becomes an int8 initializer and a scale, dequantized
//! in the graph by `Cast` + `Mul` in front of the node, so that any ONNX
//! runtime loads the model unchanged, and the CPU backend runs those
//! products on its int8 kernels. The scheme is the CPU backend's
//! ([`crate::backend::cpu::qlinear`]): `s = max |w| / 127` per channel,
//! `q = round(w / s)` with ties to even, which is also what the Python
//! export (`models/export/export.py`) writes for the shipped int8 bundle.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context, Result};
use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::{AttributeProto, ModelProto, NodeProto, TensorProto};

use crate::backend::cpu::qlinear::quantize_axis;

/// A quantized model: its bytes and how many weights became int8.
#[derive(Debug)]
pub struct Quantized {
    pub bytes: Vec<u8>,
    pub weights: usize,
}

/// The output-channel axis of the weight input of `node`, of rank `rank`,
/// when it is a product whose weight is quantized.
fn channel_axis(node: &NodeProto, rank: usize) -> Option<usize> {
    let attribute = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.i);
    match node.op_type.as_str() {
        "MatMul" => Some(rank - 1),
        "Gemm" => Some(if attribute("transB").unwrap_or(0) != 0 { 0 } else { 1 }),
        "Conv" => Some(0),
        _ => None,
    }
}

/// The f32 values of `tensor`, from its raw bytes or its float list.
fn f32_values(tensor: &TensorProto, count: usize) -> Result<Vec<f32>> {
    let what = || format!("weight {}", tensor.name);
    if tensor.data_location == Some(DataLocation::External as i32) {
        bail!("{}: stored outside the model file, expected it inside", what());
    }
    let values: Vec<f32> = if tensor.raw_data.is_empty() {
        tensor.float_data.clone()
    } else {
        tensor.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    if values.len() != count {
        bail!("{}: {} values for a shape of {count}", what(), values.len());
    }
    Ok(values)
}

/// `name`, or `name` with a number after it, that is not in `taken`; then taken.
fn fresh(taken: &mut HashSet<String>, name: String) -> String {
    let mut candidate = name.clone();
    let mut i = 1;
    while taken.contains(&candidate) {
        candidate = format!("{name}_{i}");
        i += 1;
    }
    taken.insert(candidate.clone());
    candidate
}

fn tensor(name: String, data_type: DataType, dims: &[i64], raw_data: Vec<u8>) -> TensorProto {
    TensorProto { name, data_type: data_type as i32, dims: dims.to_vec(), raw_data, ..TensorProto::default() }
}

/// Rewrites the ONNX model `model` with int8 weights (see the module's doc).
pub fn quantize_int8(model: &[u8]) -> Result<Quantized> {
    let mut proto = ModelProto::decode(model).context("model: not an ONNX model")?;
    let graph = proto.graph.as_mut().context("model: an ONNX model without a graph")?;
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for input in graph.node.iter().flat_map(|n| &n.input) {
        *uses.entry(input.as_str()).or_default() += 1;
    }
    // The initializers to quantize, with their channel axis; not one that
    // is also a graph input (older exporters list them there), which a
    // caller could replace.
    let inputs: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    let mut targets: HashMap<String, usize> = HashMap::new();
    for node in &graph.node {
        let Some(name) = node.input.get(1) else { continue };
        let Some(init) = graph.initializer.iter().find(|t| &t.name == name) else { continue };
        let single = uses[name.as_str()] == 1 && !inputs.contains(name.as_str());
        if init.data_type != DataType::Float as i32 || init.dims.len() < 2 || !single {
            continue;
        }
        if let Some(axis) = channel_axis(node, init.dims.len()) {
            targets.insert(name.clone(), axis);
        }
    }
    let mut taken: HashSet<String> =
        graph.node.iter().flat_map(|n| n.input.iter().chain(&n.output)).cloned().collect();
    taken.extend(graph.initializer.iter().map(|t| t.name.clone()));
    taken.extend(graph.node.iter().map(|n| n.name.clone()));
    let mut initializers = Vec::with_capacity(graph.initializer.len() + targets.len());
    let mut dequantize = Vec::new();
    for init in std::mem::take(&mut graph.initializer) {
        let Some(&axis) = targets.get(&init.name) else {
            initializers.push(init);
            continue;
        };
        let dims: Vec<usize> = init.dims.iter().map(|&d| usize::try_from(d)).collect::<Result<_, _>>()?;
        let w = f32_values(&init, dims.iter().product())?;
        let (q, scale) = quantize_axis(&w, &dims, axis);
        let mut scale_dims = vec![1i64; dims.len()];
        scale_dims[axis] = init.dims[axis];
        let (q_name, scale_name, dq_name) = (
            fresh(&mut taken, format!("{}_int8", init.name)),
            fresh(&mut taken, format!("{}_scale", init.name)),
            fresh(&mut taken, format!("{}_dq", init.name)),
        );
        initializers.push(tensor(
            q_name.clone(),
            DataType::Int8,
            &init.dims,
            q.iter().map(|&v| v as u8).collect(),
        ));
        let scale_bytes = scale.iter().flat_map(|s| s.to_le_bytes()).collect();
        initializers.push(tensor(scale_name.clone(), DataType::Float, &scale_dims, scale_bytes));
        let to = AttributeProto {
            name: "to".into(),
            r#type: AttributeType::Int as i32,
            i: DataType::Float as i64,
            ..AttributeProto::default()
        };
        dequantize.push(NodeProto {
            name: fresh(&mut taken, format!("{}_cast", init.name)),
            op_type: "Cast".into(),
            input: vec![q_name],
            output: vec![dq_name.clone()],
            attribute: vec![to],
            ..NodeProto::default()
        });
        dequantize.push(NodeProto {
            name: fresh(&mut taken, format!("{}_dequant", init.name)),
            op_type: "Mul".into(),
            input: vec![dq_name, scale_name],
            output: vec![init.name.clone()],
            ..NodeProto::default()
        });
    }
    graph.initializer = initializers;
    let weights = dequantize.len() / 2;
    if weights == 0 {
        bail!("model: no f32 weight of a MatMul, Gemm or Conv to quantize");
    }
    dequantize.append(&mut graph.node);
    graph.node = dequantize;
    Ok(Quantized { bytes: proto.encode_to_vec(), weights })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_model_quantizes_once_and_garbage_not_at_all() {
        let fp32 =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fmnist-vit-ggem/model.onnx"))
                .unwrap();
        let quantized = quantize_int8(&fp32).unwrap();
        assert_eq!(quantized.weights, 18);
        assert!(quantized.bytes.len() * 3 < fp32.len(), "{} of {} bytes", quantized.bytes.len(), fp32.len());
        // Its weights are int8 now: nothing is left to quantize.
        let again = quantize_int8(&quantized.bytes).unwrap_err().to_string();
        assert!(again.contains("no f32 weight"), "{again}");
        let garbage = quantize_int8(b"\xff\xff\xff not protobuf").unwrap_err();
        assert!(format!("{garbage:#}").starts_with("model: "), "{garbage:#}");
    }
}
