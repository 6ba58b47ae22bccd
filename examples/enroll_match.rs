//! Enrolment and matching with the gallery stored in every edge format.
//!
//! The digits data (getting-started/data/digits.csv: 1797 images of 8x8 pixels, ten
//! classes) stands in for a face or product gallery: the first `ENROLLED` images of each
//! class are enrolled, every other image is a probe matched against the gallery (cosine,
//! nearest enrolled image). The embedding is the pixel vector centred on the enrolled
//! images' mean, so its sign bits carry information. The gallery is stored in f32, f16,
//! bf16, int8 (searched with the f32 probes, and with probes quantized to int8 too, whose
//! integer dot products are exact) and as sign bits searched by Hamming distance, the
//! shortlist of `SHORTLIST` re-scored against the int8 copy. The final line's `i8` is the
//! int8 gallery with f32 probes.
//!
//! ```text
//! cargo run --release --example enroll_match
//! ```
//!
//! Prints a table (format, bytes per enrolled item, match@1, microseconds per probe, one
//! probe per call) and ends with one line:
//! `match@1 f32=<v> f16=<v> bf16=<v> i8=<v> binary_rescored=<v>`.

use std::time::Instant;
use triplet_kernels::{
    binary_words_len, gallery_norms_len, knn_edge, knn_edge_i8, knn_edge_i8_workspace_len,
    knn_edge_workspace_len, knn_gallery, knn_gallery_workspace_len, knn_hamming, knn_rescored,
    knn_rescored_workspace_len, prepare_edge_gallery, prepare_gallery, quantize_bf16,
    quantize_binary, quantize_f16, quantize_i8, BinaryMatrix, EdgeMatrix, Matrix, SearchMetric,
};

/// Images enrolled per class.
const ENROLLED: usize = 10;
/// Candidates the binary pass keeps for re-scoring (the rescore multiplier times `k = 1`):
/// 16 of the 100 enrolled images; 10 loses about 0.009 of match@1, 20 about 0.001.
const SHORTLIST: usize = 16;
const DIM: usize = 64;

fn load() -> Result<(Vec<f32>, Vec<u32>), String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/getting-started/data/digits.csv"
    );
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let mut fields = line.split(',');
        let label = fields.next().ok_or("empty line")?;
        labels.push(label.parse::<u32>().map_err(|e| e.to_string())?);
        for f in fields {
            x.push(f.parse::<f32>().map_err(|e| e.to_string())?);
        }
    }
    Ok((x, labels))
}

/// Fraction of probes whose match has their label.
fn match_at_1(found: &[u32], gallery_labels: &[u32], probe_labels: &[u32]) -> f64 {
    let hits = found
        .iter()
        .zip(probe_labels)
        .filter(|&(&j, &l)| gallery_labels[j as usize] == l)
        .count();
    hits as f64 / probe_labels.len() as f64
}

/// Runs `search(probe, out_index)` for every probe, one call each; returns the matches
/// and the mean microseconds per probe.
fn per_probe(n: usize, mut search: impl FnMut(usize, &mut [u32])) -> (Vec<u32>, f64) {
    let mut found = vec![0_u32; n];
    // One warm-up pass, then the timed one.
    for (i, f) in found.iter_mut().enumerate() {
        search(i, std::slice::from_mut(f));
    }
    let t = Instant::now();
    for (i, f) in found.iter_mut().enumerate() {
        search(i, std::slice::from_mut(f));
    }
    (found, t.elapsed().as_secs_f64() * 1e6 / n as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (x, labels) = load()?;
    let n_all = labels.len();
    // Split: the first ENROLLED images of each class enrolled, the rest probes.
    let mut seen = [0_usize; 10];
    let (mut gal, mut gal_labels, mut probes, mut probe_labels) = (vec![], vec![], vec![], vec![]);
    for i in 0..n_all {
        let row = &x[i * DIM..(i + 1) * DIM];
        let c = labels[i] as usize;
        if seen[c] < ENROLLED {
            seen[c] += 1;
            gal.extend_from_slice(row);
            gal_labels.push(labels[i]);
        } else {
            probes.extend_from_slice(row);
            probe_labels.push(labels[i]);
        }
    }
    let (m, n) = (gal_labels.len(), probe_labels.len());
    // Centre on the enrolled images' mean.
    let mut mean = [0.0_f32; DIM];
    for row in gal.chunks_exact(DIM) {
        for (a, &v) in mean.iter_mut().zip(row) {
            *a += v / m as f32;
        }
    }
    for row in gal
        .chunks_exact_mut(DIM)
        .chain(probes.chunks_exact_mut(DIM))
    {
        for (v, &a) in row.iter_mut().zip(&mean) {
            *v -= a;
        }
    }
    let g = Matrix::new(&gal, m, DIM)?;
    let metric = SearchMetric::Cosine;
    let probe = |i: usize| Matrix::new(&probes[i * DIM..(i + 1) * DIM], 1, DIM);
    let mut rows: Vec<(String, String, f64, f64)> = Vec::new();
    let mut pws = [0.0_f32; DIM];
    let mut dist = [0.0_f32; 1];

    // f32.
    let mut norms = vec![0.0_f32; gallery_norms_len(m)];
    let gallery = prepare_gallery(g, metric, &mut norms)?;
    let mut ws = vec![0.0_f32; knn_gallery_workspace_len(1, m, DIM)];
    let (found, us) = per_probe(n, |i, out| {
        knn_gallery(probe(i).unwrap(), &gallery, 1, out, &mut dist, &mut ws).unwrap();
    });
    let f32_m = match_at_1(&found, &gal_labels, &probe_labels);
    rows.push(("f32".into(), format!("{}", 4 * DIM), f32_m, us));

    // f16 and bf16.
    let mut ws = vec![0.0_f32; knn_edge_workspace_len(1, m, DIM)];
    let (mut f16_bits, mut bf16_bits) = (vec![0_u16; m * DIM], vec![0_u16; m * DIM]);
    quantize_f16(g, &mut f16_bits)?;
    quantize_bf16(g, &mut bf16_bits)?;
    let mut half = [0.0_f64; 2];
    for (t, (name, e)) in [
        ("f16", EdgeMatrix::f16(&f16_bits, m, DIM)?),
        ("bf16", EdgeMatrix::bf16(&bf16_bits, m, DIM)?),
    ]
    .into_iter()
    .enumerate()
    {
        let mut norms = vec![0.0_f32; m];
        let eg = prepare_edge_gallery(e, metric, &mut norms, &mut pws)?;
        let (found, us) = per_probe(n, |i, out| {
            knn_edge(probe(i).unwrap(), &eg, 1, out, &mut dist, &mut ws).unwrap();
        });
        half[t] = match_at_1(&found, &gal_labels, &probe_labels);
        rows.push((name.into(), format!("{}", e.bytes_per_row()), half[t], us));
    }

    // int8 gallery: f32 probes (as the model emits them), then int8 probes (quantized
    // inside the timed call; the integer dot products are exact).
    let (mut codes, mut scales) = (vec![0_i8; m * DIM], vec![0.0_f32; m]);
    quantize_i8(g, &mut codes, &mut scales)?;
    let i8_rows = EdgeMatrix::i8(&codes, &scales, m, DIM)?;
    let mut i8_norms = vec![0.0_f32; m];
    let i8_gallery = prepare_edge_gallery(i8_rows, metric, &mut i8_norms, &mut pws)?;
    let (found, us) = per_probe(n, |i, out| {
        knn_edge(probe(i).unwrap(), &i8_gallery, 1, out, &mut dist, &mut ws).unwrap();
    });
    let i8_m = match_at_1(&found, &gal_labels, &probe_labels);
    let bytes = format!("{}", i8_rows.bytes_per_row());
    rows.push(("i8".into(), bytes.clone(), i8_m, us));
    let mut ws = vec![0.0_f32; knn_edge_i8_workspace_len(1, m, DIM)];
    let (mut qc, mut qs) = ([0_i8; DIM], [0.0_f32; 1]);
    let (found, us) = per_probe(n, |i, out| {
        quantize_i8(probe(i).unwrap(), &mut qc, &mut qs).unwrap();
        let q = EdgeMatrix::i8(&qc, &qs, 1, DIM).unwrap();
        knn_edge_i8(q, &i8_gallery, 1, out, &mut dist, &mut ws).unwrap();
    });
    let i8_i8 = match_at_1(&found, &gal_labels, &probe_labels);
    rows.push(("i8, int8 probes".into(), bytes, i8_i8, us));

    // Sign bits: Hamming alone, then re-scored against the int8 copy.
    let words = binary_words_len(1, DIM);
    let mut bits = vec![0_u64; binary_words_len(m, DIM)];
    quantize_binary(g, &mut bits)?;
    let bm = BinaryMatrix::new(&bits, m, DIM)?;
    let mut qb = vec![0_u64; words];
    let (found, us) = per_probe(n, |i, out| {
        quantize_binary(probe(i).unwrap(), &mut qb).unwrap();
        let q = BinaryMatrix::new(&qb, 1, DIM).unwrap();
        knn_hamming(q, bm, 1, out, &mut dist).unwrap();
    });
    let ham_m = match_at_1(&found, &gal_labels, &probe_labels);
    rows.push((
        "binary (Hamming)".into(),
        format!("{}", 8 * words),
        ham_m,
        us,
    ));
    let mut ws = vec![0.0_f32; knn_rescored_workspace_len(DIM, SHORTLIST)];
    let (found, us) = per_probe(n, |i, out| {
        knn_rescored(
            probe(i).unwrap(),
            bm,
            &i8_gallery,
            SHORTLIST,
            1,
            out,
            &mut dist,
            &mut ws,
        )
        .unwrap();
    });
    let resc_m = match_at_1(&found, &gal_labels, &probe_labels);
    let bytes = format!("{} + {}", 8 * words, i8_rows.bytes_per_row());
    rows.push((
        format!("binary, {SHORTLIST} re-scored in i8"),
        bytes,
        resc_m,
        us,
    ));

    println!("{m} enrolled ({ENROLLED} per class), {n} probes, d = {DIM}, cosine, k = 1\n");
    println!("| format | bytes per item | match@1 | us per probe |");
    println!("|---|---|---|---|");
    for (name, bytes, mm, us) in &rows {
        println!("| {name} | {bytes} | {mm:.4} | {us:.2} |");
    }
    println!();
    println!(
        "match@1 f32={f32_m:.4} f16={:.4} bf16={:.4} i8={i8_m:.4} binary_rescored={resc_m:.4}",
        half[0], half[1]
    );
    Ok(())
}
