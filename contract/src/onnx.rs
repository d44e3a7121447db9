//! Uploaded models are untrusted input: what an ONNX file may not ask for.
//!
//! An ONNX tensor may keep its bytes outside the model file ("external
//! data": `data_location = EXTERNAL` and a `location` path). ONNX Runtime
//! reads such a path relative to the model, or to the working directory when
//! the model is loaded from memory, so a tenant could name any file the
//! process can read (the operator key, the registry's database) and get its
//! bytes back as a tensor. Taskmesh serves self-contained models only:
//! [`check_self_contained`] walks the protobuf (no generated code, bounded
//! depth) and refuses a model that has external data anywhere, the registry
//! at upload and the node again before it builds a session.
//!
//! The walk covers every place onnx.proto puts a `TensorProto`: graph
//! initializers and sparse initializers, node attributes (`t`, `tensors`,
//! sparse tensors) and the graphs nested in attributes (`If`, `Loop`,
//! `Scan`), functions, and training graphs. A file that is not well-formed
//! protobuf is refused too, so that this reader and ONNX Runtime never
//! disagree about what the bytes say.

/// How deeply messages may nest (graphs in attributes in graphs ...).
const MAX_DEPTH: usize = 64;

/// The message types the walk descends into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
    Function,
    TrainingInfo,
}

/// Where a message type keeps the messages that can hold tensors:
/// `(field number, message type)`.
fn children(message: Message) -> &'static [(u64, Message)] {
    use Message::*;
    match message {
        // graph = 7, training_info = 20, functions = 25
        Model => &[(7, Graph), (20, TrainingInfo), (25, Function)],
        // node = 1, initializer = 5, sparse_initializer = 15
        Graph => &[(1, Node), (5, Tensor), (15, SparseTensor)],
        // attribute = 5
        Node => &[(5, Attribute)],
        // t = 5, g = 6, tensors = 10, graphs = 11, sparse_tensor = 22, sparse_tensors = 23
        Attribute => &[
            (5, Tensor),
            (6, Graph),
            (10, Tensor),
            (11, Graph),
            (22, SparseTensor),
            (23, SparseTensor),
        ],
        // values = 1, indices = 2
        SparseTensor => &[(1, Tensor), (2, Tensor)],
        // node = 7
        Function => &[(7, Node)],
        // initialization = 1, algorithm = 2
        TrainingInfo => &[(1, Graph), (2, Graph)],
        Tensor => &[],
    }
}

/// `TensorProto.name`, `.external_data` and `.data_location`.
const TENSOR_NAME: u64 = 8;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: u64 = 1;

/// Refuses a model that keeps tensor data outside its own bytes, or that is
/// not well-formed protobuf. `Err` says why, naming the tensor and the path
/// it asked for.
pub fn check_self_contained(bytes: &[u8]) -> Result<(), String> {
    walk(bytes, Message::Model, 0)
}

fn walk(bytes: &[u8], message: Message, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "the model nests messages more than {MAX_DEPTH} deep"
        ));
    }
    let mut reader = Reader { bytes, at: 0 };
    let mut external = false;
    let mut name = String::new();
    let mut location = String::new();
    while let Some((field, value)) = reader.next_field()? {
        match (message, field, value) {
            (Message::Tensor, TENSOR_DATA_LOCATION, Value::Varint(v)) => {
                external |= v == EXTERNAL;
            }
            (Message::Tensor, TENSOR_EXTERNAL_DATA, Value::Bytes(entry)) => {
                external = true;
                if let Some((key, value)) = string_entry(entry)? {
                    if key == "location" {
                        location = value;
                    }
                }
            }
            (Message::Tensor, TENSOR_NAME, Value::Bytes(b)) => {
                name = String::from_utf8_lossy(b).chars().take(128).collect();
            }
            (_, field, Value::Bytes(b)) => {
                if let Some(&(_, child)) = children(message).iter().find(|(f, _)| *f == field) {
                    walk(b, child, depth + 1)?;
                }
            }
            _ => {}
        }
    }
    if external {
        let location: String = location.chars().take(256).collect();
        return Err(format!(
            "tensor {name:?} keeps its data outside the model file (external data at {location:?}); \
             Taskmesh serves self-contained models only: save the model with all tensors inside it \
             (onnx.save_model(model, path, save_as_external_data=False))"
        ));
    }
    Ok(())
}

/// A `StringStringEntryProto`: key = 1, value = 2.
fn string_entry(bytes: &[u8]) -> Result<Option<(String, String)>, String> {
    let mut reader = Reader { bytes, at: 0 };
    let (mut key, mut value) = (None, None);
    while let Some((field, v)) = reader.next_field()? {
        match (field, v) {
            (1, Value::Bytes(b)) => key = Some(String::from_utf8_lossy(b).into_owned()),
            (2, Value::Bytes(b)) => value = Some(String::from_utf8_lossy(b).into_owned()),
            _ => {}
        }
    }
    Ok(key.zip(value))
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.bytes.get(self.at) else {
                return Err(malformed("a varint runs past the end"));
            };
            self.at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("a varint is longer than 10 bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.at.checked_add(n))
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| malformed("a field runs past the end"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    /// The next `(field number, value)`, or `None` at the end.
    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(malformed("field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            // Groups (3, 4) do not occur in onnx.proto; 6 and 7 are not wire types.
            other => return Err(malformed(&format!("wire type {other}"))),
        };
        Ok(Some((field, value)))
    }
}

fn malformed(why: &str) -> String {
    format!("not a well-formed ONNX model: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal protobuf writer for building test models.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(field: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(field << 3 | 2, &mut out);
        varint(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }

    fn varint_field(field: u64, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(field << 3, &mut out);
        varint(v, &mut out);
        out
    }

    fn external_tensor(location: &str) -> Vec<u8> {
        let mut entry = bytes_field(1, b"location");
        entry.extend(bytes_field(2, location.as_bytes()));
        let mut tensor = bytes_field(TENSOR_NAME, b"w");
        tensor.extend(bytes_field(TENSOR_EXTERNAL_DATA, &entry));
        tensor.extend(varint_field(TENSOR_DATA_LOCATION, EXTERNAL));
        tensor
    }

    fn inline_tensor() -> Vec<u8> {
        let mut tensor = bytes_field(TENSOR_NAME, b"w");
        tensor.extend(varint_field(2, 1)); // data_type FLOAT
        tensor.extend(bytes_field(9, &[0, 0, 128, 63])); // raw_data
        tensor
    }

    fn model(graph: &[u8]) -> Vec<u8> {
        let mut m = varint_field(1, 8); // ir_version
        m.extend(bytes_field(7, graph));
        m
    }

    #[test]
    fn a_self_contained_model_passes() {
        let graph = bytes_field(5, &inline_tensor());
        assert_eq!(check_self_contained(&model(&graph)), Ok(()));
        assert_eq!(check_self_contained(&[]), Ok(()));
    }

    #[test]
    fn an_external_initializer_is_refused_with_its_path() {
        let graph = bytes_field(5, &external_tensor(".taskmesh/admin.key"));
        let err = check_self_contained(&model(&graph)).unwrap_err();
        assert!(err.contains(".taskmesh/admin.key"), "{err}");
        assert!(err.contains("\"w\""), "{err}");
    }

    #[test]
    fn external_data_is_found_wherever_a_tensor_can_be() {
        let ext = external_tensor("data/registry.redb");
        // A Constant node's attribute `t`.
        let attribute = bytes_field(5, &ext);
        let node = bytes_field(5, &attribute);
        let in_attribute = bytes_field(1, &node);
        // An If node's then-branch graph holding the initializer.
        let inner = bytes_field(5, &ext);
        let nested = bytes_field(1, &bytes_field(5, &bytes_field(6, &inner)));
        // A sparse initializer's values.
        let sparse = bytes_field(15, &bytes_field(1, &ext));
        for graph in [in_attribute, nested, sparse] {
            assert!(check_self_contained(&model(&graph)).is_err());
        }
        // A function's node attribute.
        let function = bytes_field(7, &bytes_field(5, &bytes_field(5, &ext)));
        let mut m = varint_field(1, 8);
        m.extend(bytes_field(25, &function));
        assert!(check_self_contained(&m).is_err());
        // data_location alone, without a location entry.
        let tensor = varint_field(TENSOR_DATA_LOCATION, EXTERNAL);
        assert!(check_self_contained(&model(&bytes_field(5, &tensor))).is_err());
    }

    #[test]
    fn malformed_bytes_are_refused_and_never_panic() {
        assert!(check_self_contained(&[0x3a, 0x05, 0x00]).is_err()); // length past the end
        assert!(check_self_contained(&[0xff; 11]).is_err()); // endless varint
        assert!(check_self_contained(&[0x0b]).is_err()); // a group
                                                         // Deep nesting is bounded, not a stack overflow.
        let mut graph = bytes_field(5, &inline_tensor());
        for _ in 0..200 {
            graph = bytes_field(1, &bytes_field(5, &bytes_field(6, &graph)));
        }
        let err = check_self_contained(&model(&graph)).unwrap_err();
        assert!(err.contains("deep"), "{err}");
    }
}
