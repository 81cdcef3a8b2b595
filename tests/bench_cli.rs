//! `mmt bench`: a two-point sweep over the shipped samples.

mod common;

use common::{mmt, model_ready};

#[test]
fn a_two_point_sweep_writes_a_csv_row_per_point_and_a_plot() {
    if !model_ready() {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let out_arg = out.path().to_str().expect("utf-8 path");
    let (status, stdout, stderr) = mmt(&[
        "bench",
        "--input",
        "samples",
        "--batch-size",
        "4",
        "--decoding",
        "full,fast",
        "--workers",
        "1",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        out_arg,
    ]);
    assert!(status.success(), "mmt bench failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("best: #"), "{stdout}");

    let csv = std::fs::read_to_string(out.path().join("sweep.csv")).expect("sweep.csv");
    let mut lines = csv.lines().filter(|line| !line.starts_with('#'));
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
    };
    for row in &rows {
        assert_eq!(row.len(), header.len(), "{row:?}");
        let x_realtime: f64 = row[column("x_realtime")].parse().expect("x_realtime");
        assert!(x_realtime > 0.0, "{row:?}");
        // "ok", or "ok; disturbed: ..." when other processes shared the machine.
        assert!(row[column("status")].starts_with("ok"), "{row:?}");
        assert_eq!(row[column("completed")], "5");
        let wer: f64 = row[column("wer_pct")].parse().expect("wer_pct");
        assert!(
            (0.0..60.0).contains(&wer),
            "WER {wer} on the samples: {row:?}"
        );
        let rss: f64 = row[column("peak_rss_mb")].parse().expect("peak_rss_mb");
        assert!(rss > 10.0, "{row:?}");
    }
    let decodings: Vec<&str> = rows.iter().map(|r| r[column("decoding")]).collect();
    assert_eq!(decodings, ["full", "fast"]);

    let svg = std::fs::read_to_string(out.path().join("sweep.svg")).expect("sweep.svg");
    assert!(svg.starts_with("<svg"), "not an SVG");
    assert!(svg.contains("batch 4"));
    assert!(
        svg.contains("fast decoding"),
        "the fast series has its own legend entry"
    );
}
