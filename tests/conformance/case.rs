//! Typed access to one conformance case, remembering which fields were read so that a
//! field no checker understands fails the case instead of being skipped.
//!
//! A checker reads each field once, as a type ([`Case::get`], [`Case::get_opt`]): plain
//! numbers, booleans and index lists, or the serde types of this module (matrices, index
//! tuples, metric names) and of the op modules (their reduction and mining names). Each
//! read is recorded; [`Case::all_fields_read`] then fails the case if the case holds a
//! top-level or `expected` field that no read touched.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use triplet_kernels::{Matrix, Metric, Quadruplet, Triplet};

/// A row-major matrix of a case: `{"rows": r, "cols": c, "data": [r * c numbers]}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawMat")]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
    /// The values as `f32` (inputs are exact `f32` values printed with 9 digits).
    f32: Vec<f32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMat {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl TryFrom<RawMat> for Mat {
    type Error = String;

    fn try_from(m: RawMat) -> Result<Self, String> {
        if Some(m.data.len()) != m.rows.checked_mul(m.cols) {
            return Err(format!(
                "{} x {} matrix with {} values",
                m.rows,
                m.cols,
                m.data.len()
            ));
        }
        Ok(Mat {
            rows: m.rows,
            cols: m.cols,
            f32: m.data.iter().map(|&v| v as f32).collect(),
            data: m.data,
        })
    }
}

impl Mat {
    /// The matrix as the kernels' input.
    pub fn matrix(&self) -> Result<Matrix<'_>, String> {
        Matrix::new(&self.f32, self.rows, self.cols).map_err(|e| e.to_string())
    }
}

/// A metric name of the format.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    SquaredEuclidean,
    Euclidean,
    Cosine,
}

impl From<MetricName> for Metric {
    fn from(m: MetricName) -> Metric {
        match m {
            MetricName::SquaredEuclidean => Metric::SquaredEuclidean,
            MetricName::Euclidean => Metric::Euclidean,
            MetricName::Cosine => Metric::Cosine,
        }
    }
}

/// An `[anchor, positive, negative]` index triple.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(from = "[u32; 3]")]
pub struct TripletIdx(pub Triplet);

impl From<[u32; 3]> for TripletIdx {
    fn from([a, p, n]: [u32; 3]) -> Self {
        TripletIdx(Triplet::new(a, p, n))
    }
}

/// An `[anchor, positive, negative1, negative2]` index quadruple.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(from = "[u32; 4]")]
pub struct QuadrupletIdx(pub Quadruplet);

impl From<[u32; 4]> for QuadrupletIdx {
    fn from(q: [u32; 4]) -> Self {
        QuadrupletIdx(Quadruplet::from(q))
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

    /// A top-level field, or `expected.<key>` when the key has that prefix; marked read.
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

    fn parse<T: DeserializeOwned>(key: &str, v: &Value) -> Result<T, String> {
        T::deserialize(v).map_err(|e| format!("`{key}`: {e}"))
    }

    /// The field `key` (`expected.<k>` for an expectation) as a `T`; marks it read.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, String> {
        let v = self
            .field(key)
            .ok_or_else(|| format!("missing field `{key}`"))?;
        Self::parse(key, v)
    }

    /// [`Case::get`] for an optional field: `None` (and nothing marked) when absent.
    pub fn get_opt<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        if self.has(key) {
            self.get(key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The whole `expected` object as one matrix (the distance op's expectation): its
    /// `rows`, `cols` and `data` are read by [`Mat`], which refuses any other key.
    pub fn expected_matrix(&self) -> Result<Mat, String> {
        let want: Mat = self.get("expected")?;
        for k in ["rows", "cols", "data"] {
            self.mark(&format!("expected.{k}"));
        }
        Ok(want)
    }

    fn has(&self, key: &str) -> bool {
        match key.strip_prefix("expected.") {
            Some(k) => self.raw["expected"].get(k).is_some(),
            None => self.raw.get(key).is_some(),
        }
    }

    /// The case's `metric`.
    pub fn metric(&self) -> Result<Metric, String> {
        self.get::<MetricName>("metric").map(Metric::from)
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
