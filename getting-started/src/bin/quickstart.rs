//! The smallest complete use of the crate: a distance matrix of a few embeddings.
//!
//! Run with `cargo run --release -p triplet-kernels-examples --bin quickstart`.

use triplet_kernels::{pairwise_distances, pairwise_distances_workspace_len, Matrix, Metric};

fn main() -> Result<(), triplet_kernels::Error> {
    // Four 3-d embeddings, row-major: two near the x axis, two near the y axis.
    let data = [
        1.0, 0.1, 0.0, //
        0.9, 0.0, 0.1, //
        0.0, 1.0, 0.1, //
        0.1, 0.9, 0.0,
    ];
    let x = Matrix::new(&data, 4, 3)?;
    let mut d = [0.0_f32; 16];
    // Scratch sized by a const fn: a stack array, no allocation.
    let mut ws = [0.0_f32; pairwise_distances_workspace_len(4, 3)];
    for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
        pairwise_distances(x, metric, &mut d, &mut ws)?;
        println!("{metric:?} distances:");
        for row in d.chunks_exact(4) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:7.4}")).collect();
            println!("  [{}]", cells.join(", "));
        }
    }
    Ok(())
}
