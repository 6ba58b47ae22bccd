//! Typed access to one conformance case, remembering which fields were read so that a
//! field no checker understands fails the case instead of being skipped.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde_json::Value;
use triplet_kernels::Metric;

/// A row-major matrix read from a case.
#[derive(Clone, Debug)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    /// The values as `f32` (inputs are exact `f32` values printed with 9 digits).
    pub fn f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
}

pub struct Case<'a> {
    raw: &'a Value,
    read: RefCell<BTreeSet<String>>,
}

impl<'a> Case<'a> {
    pub fn new(raw: &'a Value) -> Self {
        let case = Case {
            raw,
            read: RefCell::new(BTreeSet::new()),
        };
        // Bookkeeping fields every case carries.
        for k in ["name", "source", "rtol", "atol"] {
            case.mark(k);
        }
        case
    }

    fn mark(&self, key: &str) {
        self.read.borrow_mut().insert(key.to_owned());
    }

    pub fn name(&self) -> String {
        self.raw["name"].as_str().unwrap_or("<unnamed>").to_owned()
    }

    /// `Err` naming every top-level or `expected` field that no checker read.
    pub fn all_fields_read(&self) -> Result<(), String> {
        let read = self.read.borrow();
        let mut unread = Vec::new();
        if let Some(obj) = self.raw.as_object() {
            for k in obj.keys() {
                if !read.contains(k) {
                    unread.push(k.clone());
                }
            }
        }
        if let Some(obj) = self.raw["expected"].as_object() {
            for k in obj.keys() {
                let key = format!("expected.{k}");
                if !read.contains(&key) {
                    unread.push(key);
                }
            }
        }
        if unread.is_empty() {
            Ok(())
        } else {
            Err(format!("fields not understood: {}", unread.join(", ")))
        }
    }

    /// A top-level field, or `expected.<key>` when the key has that prefix.
    fn field(&self, key: &str) -> Option<&'a Value> {
        self.mark(key);
        match key.strip_prefix("expected.") {
            Some(k) => {
                self.mark("expected");
                self.raw["expected"].get(k)
            }
            None => self.raw.get(key),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        match key.strip_prefix("expected.") {
            Some(k) => self.raw["expected"].get(k).is_some(),
            None => self.raw.get(key).is_some(),
        }
    }

    pub fn value(&self, key: &str) -> Result<&'a Value, String> {
        self.field(key)
            .ok_or_else(|| format!("missing field `{key}`"))
    }

    pub fn f64(&self, key: &str) -> Result<f64, String> {
        self.value(key)?
            .as_f64()
            .ok_or_else(|| format!("`{key}` is not a number"))
    }

    pub fn bool(&self, key: &str) -> Result<bool, String> {
        self.value(key)?
            .as_bool()
            .ok_or_else(|| format!("`{key}` is not a boolean"))
    }

    pub fn str(&self, key: &str) -> Result<&'a str, String> {
        self.value(key)?
            .as_str()
            .ok_or_else(|| format!("`{key}` is not a string"))
    }

    pub fn f64s(&self, key: &str) -> Result<Vec<f64>, String> {
        self.value(key)?
            .as_array()
            .ok_or_else(|| format!("`{key}` is not an array"))?
            .iter()
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| format!("`{key}` holds a non-number"))
            })
            .collect()
    }

    pub fn u32s(&self, key: &str) -> Result<Vec<u32>, String> {
        self.value(key)?
            .as_array()
            .ok_or_else(|| format!("`{key}` is not an array"))?
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| format!("`{key}` holds a non-u32"))
            })
            .collect()
    }

    /// An array of equally long index tuples (triplets, quadruplets).
    pub fn tuples<const K: usize>(&self, key: &str) -> Result<Vec<[u32; K]>, String> {
        self.value(key)?
            .as_array()
            .ok_or_else(|| format!("`{key}` is not an array"))?
            .iter()
            .map(|t| {
                let v: Vec<u32> = t
                    .as_array()
                    .ok_or_else(|| format!("`{key}` holds a non-array"))?
                    .iter()
                    .map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
                    .collect::<Option<_>>()
                    .ok_or_else(|| format!("`{key}` holds a non-index"))?;
                <[u32; K]>::try_from(v).map_err(|_| format!("`{key}` tuple is not of length {K}"))
            })
            .collect()
    }

    pub fn mat(&self, key: &str) -> Result<Mat, String> {
        let v = self.value(key)?;
        let rows = v["rows"].as_u64().ok_or("matrix without rows")? as usize;
        let cols = v["cols"].as_u64().ok_or("matrix without cols")? as usize;
        let data = v["data"]
            .as_array()
            .ok_or("matrix without data")?
            .iter()
            .map(|x| x.as_f64().ok_or("matrix holds a non-number"))
            .collect::<Result<Vec<_>, _>>()?;
        if data.len() != rows * cols {
            return Err(format!(
                "`{key}`: {rows} x {cols} with {} values",
                data.len()
            ));
        }
        Ok(Mat { rows, cols, data })
    }

    pub fn metric(&self) -> Result<Metric, String> {
        match self.str("metric")? {
            "squared_euclidean" => Ok(Metric::SquaredEuclidean),
            "euclidean" => Ok(Metric::Euclidean),
            "cosine" => Ok(Metric::Cosine),
            other => Err(format!("unknown metric `{other}`")),
        }
    }

    fn tol(&self) -> (f64, f64) {
        (
            self.raw["rtol"].as_f64().unwrap_or(0.0),
            self.raw["atol"].as_f64().unwrap_or(0.0),
        )
    }

    /// `|got - want| <= atol + rtol |want|`.
    pub fn close(&self, what: &str, got: f64, want: f64) -> Result<(), String> {
        let (rtol, atol) = self.tol();
        if (got - want).abs() <= atol + rtol * want.abs() {
            Ok(())
        } else {
            Err(format!("{what}: got {got}, want {want}"))
        }
    }

    /// Element-wise [`Case::close`] over two equally long sequences.
    pub fn close_all(&self, what: &str, got: &[f32], want: &[f64]) -> Result<(), String> {
        if got.len() != want.len() {
            return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
        }
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            self.close(&format!("{what}[{i}]"), f64::from(g), w)?;
        }
        Ok(())
    }

    /// Element-wise comparison with an expected matrix of the given shape.
    pub fn close_mat(
        &self,
        what: &str,
        got: &[f32],
        want: &Mat,
        rows: usize,
        cols: usize,
    ) -> Result<(), String> {
        if (want.rows, want.cols) != (rows, cols) {
            return Err(format!(
                "{what}: expected shape {} x {}, computed {rows} x {cols}",
                want.rows, want.cols
            ));
        }
        self.close_all(what, got, &want.data)
    }
}
