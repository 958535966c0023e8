//! swapper-bench io, swap and tune: the JSON report's shape, with and without fio, and no
//! file left behind.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// fio must be installed: the comparisons with it are part of what these tests check.
fn require_fio() {
    let ok = Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "fio is not installed: install it with `apt-get install fio`");
}

/// Runs `swapper-bench io --size 8MiB --runs 1 --json --dir DIR [extra]` and parses stdout.
fn run_bench(dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["io", "--size", "8MiB"];
    args.extend_from_slice(extra);
    run_cmd(dir, &args)
}

/// Runs `swapper-bench ARGS --runs 1 --json --dir DIR` and parses stdout.
fn run_cmd(dir: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_swapper-bench"))
        .args(args)
        .args(["--runs", "1", "--json", "--dir"])
        .arg(dir)
        .output()
        .expect("swapper-bench runs");
    assert!(
        out.status.success(),
        "swapper-bench failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn check_side(v: &Value, side: &str) {
    assert!(v["results"].get(side).is_some(), "no side {side} in {v}");
    for op in ["write", "read"] {
        let s = &v["results"][side][op];
        let runs = s["runs"]
            .as_array()
            .unwrap_or_else(|| panic!("{side} {op}: no runs in {v}"));
        assert_eq!(runs.len(), 1, "{side} {op}");
        for r in runs {
            assert!(r["mib_s"].as_f64().unwrap() > 0.0, "{side} {op}: {r}");
            assert!(r["seconds"].as_f64().unwrap() > 0.0, "{side} {op}: {r}");
            assert!(r["cpu_s_per_gib"].as_f64().unwrap() >= 0.0, "{side} {op}: {r}");
            assert!(r["bytes"].as_u64().unwrap() > 0, "{side} {op}: {r}");
        }
        for k in ["median", "min", "max"] {
            assert!(s["mib_s"][k].as_f64().unwrap() > 0.0, "{side} {op} {k}");
            assert!(s["cpu_s_per_gib"][k].as_f64().is_some(), "{side} {op} {k}");
        }
    }
}

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn bench_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("swapper-bench-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

#[test]
fn json_report_has_every_figure_and_leaves_no_file() {
    let dir = bench_dir();
    let v = run_bench(dir.path(), &[]);
    let s = &v["settings"];
    assert_eq!(s["size_bytes"].as_u64(), Some(8 << 20));
    assert_eq!(s["block_size"].as_u64(), Some(1 << 20));
    assert_eq!(s["queue_depth"].as_u64(), Some(8));
    assert_eq!(s["threads"].as_u64(), Some(1));
    assert_eq!(s["runs"].as_u64(), Some(1));
    assert!(s["backend"].is_string() && s["direct_effective"].is_boolean());
    check_side(&v, "libswapper");
    assert!(v["results"].get("fio").is_none());
    assert!(v["ratios"].as_object().unwrap().is_empty());
    assert!(v["warnings"].is_array());
    assert_empty(dir.path());
}

#[test]
fn vs_fio_reports_both_sides_and_ratios() {
    require_fio();
    let dir = bench_dir();
    let v = run_bench(dir.path(), &["--vs-fio"]);
    check_side(&v, "libswapper");
    check_side(&v, "fio");
    assert!(v["settings"]["fio"]["version"].is_string());
    for op in ["write", "read"] {
        assert!(v["ratios"][op].as_f64().unwrap() > 0.0, "ratio {op}: {v}");
    }
    assert_empty(dir.path());
}

#[test]
fn bad_sizes_are_refused_with_a_message() {
    let dir = bench_dir();
    for size in ["3X", "1000K", "0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_swapper-bench"))
            .args(["io", "--runs", "1", "--size", size, "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{size}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("size"), "{size}");
    }
    assert_empty(dir.path());
}

#[test]
fn swap_reports_swapper_engine_and_fio() {
    let dir = bench_dir();
    require_fio();
    let args = [
        "swap",
        "--params",
        "4",
        "--param-size",
        "4MiB",
        "--buffers",
        "3",
        "--prefetch",
        "2",
        "--compute-ms",
        "1",
        "--vs-engine",
        "--vs-fio",
    ];
    let v = run_cmd(dir.path(), &args);
    let s = &v["settings"];
    assert_eq!(s["total_bytes"].as_u64(), Some(16 << 20));
    assert_eq!(s["params"].as_u64(), Some(4));
    assert_eq!(s["buffers"].as_u64(), Some(3));
    check_side(&v, "swapper");
    check_side(&v, "engine");
    check_side(&v, "fio");
    for pair in ["swapper/engine", "swapper/fio", "engine/fio"] {
        for op in ["write", "read"] {
            assert!(v["ratios"][pair][op].as_f64().unwrap() > 0.0, "{pair} {op}: {v}");
        }
    }
    let h = &v["io_hidden"];
    for k in ["median", "min", "max"] {
        assert!(h[k].as_f64().unwrap().is_finite(), "io_hidden {k}: {v}");
    }
    assert!(v["swapper_stats"]["bytes_read"].as_u64().unwrap() >= 16 << 20);
    assert_empty(dir.path());
}

#[test]
fn swap_spreads_over_several_drives_and_measures_new_overwritten_and_read_params() {
    let (a, b) = (bench_dir(), bench_dir());
    let dirs = format!("{}:{}", a.path().display(), b.path().display());
    for extra in [
        // Many small params, the many-small-file workload (--param-bytes is --param-size).
        &["--params", "64", "--param-bytes", "64K", "--buffers", "4"][..],
        // One large tensor, split over the drives.
        &[
            "--params",
            "1",
            "--param-size",
            "8MiB",
            "--buffers",
            "1",
            "--prefetch",
            "0",
        ][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_swapper-bench"))
            .args(["swap", "--dirs", &dirs, "--runs", "1", "--json"])
            .args(extra)
            .output()
            .expect("swapper-bench runs");
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        check_side(&v, "swapper");
        let new = &v["results"]["swapper"]["new"];
        assert!(new["mib_s"]["median"].as_f64().unwrap() > 0.0, "{v}");
        let folders = v["settings"]["folders"].as_array().unwrap();
        assert_eq!(folders.len(), 2, "{v}");
        assert!(v["swapper_stats"]["bytes_written"].as_u64().unwrap() > 0);
        assert_empty(a.path());
        assert_empty(b.path());
    }
    // The engine and fio compare one drive.
    let out = Command::new(env!("CARGO_BIN_EXE_swapper-bench"))
        .args(["swap", "--dirs", &dirs, "--vs-engine"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("one --dir"));
}

#[test]
fn swap_checksum_cost_pairs_both_modes() {
    let dir = bench_dir();
    let v = run_cmd(
        dir.path(),
        &[
            "swap",
            "--params",
            "2",
            "--param-size",
            "4MiB",
            "--buffers",
            "2",
            "--checksum-cost",
        ],
    );
    check_side(&v, "checksums-on");
    check_side(&v, "checksums-off");
    for op in ["write", "read"] {
        assert!(v["checksum_cost_percent"][op]["median"]
            .as_f64()
            .unwrap()
            .is_finite());
    }
    assert!(v["io_hidden"].is_null());
    assert_empty(dir.path());
}

#[test]
fn swap_refuses_a_prefetch_deeper_than_the_pool() {
    let dir = bench_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_swapper-bench"))
        .args([
            "swap",
            "--params",
            "2",
            "--param-size",
            "4MiB",
            "--buffers",
            "2",
            "--prefetch",
            "2",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prefetch"));
    assert_empty(dir.path());
}

#[test]
fn tune_sweeps_a_tiny_grid_and_plots_it() {
    let dir = bench_dir();
    let out_dir = bench_dir();
    let svg = out_dir.path().join("sweep.svg");
    let v = run_cmd(
        dir.path(),
        &[
            "tune",
            "--size",
            "16MiB",
            "--blocks",
            "64K,1M",
            "--depths",
            "2,8",
            "--threads",
            "1",
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    let points = v["points"].as_array().expect("points");
    assert_eq!(points.len(), 4, "{v}");
    for p in points {
        assert!(p["block_size"].as_u64().unwrap() >= 64 << 10);
        assert!(p["queue_depth"].as_u64().unwrap() >= 2);
        assert_eq!(p["threads"].as_u64(), Some(1));
        assert!(p["backend"].is_string());
        for op in ["write", "read"] {
            assert!(p[op]["mib_s"]["median"].as_f64().unwrap() > 0.0, "{p}");
            assert_eq!(p[op]["runs"].as_array().unwrap().len(), 1);
        }
    }
    for op in ["write", "read"] {
        let b = &v["best"][op];
        assert!(b["mib_s"]["median"].as_f64().unwrap() > 0.0);
        let aio = &b["deepspeed_aio"];
        for k in ["block_size", "queue_depth", "intra_op_parallelism"] {
            assert!(aio[k].as_u64().unwrap() > 0, "{k}: {b}");
        }
        for k in ["single_submit", "overlap_events", "use_gds"] {
            assert!(aio[k].is_boolean(), "{k}: {b}");
        }
        assert_eq!(aio["use_gds"], Value::Bool(false));
        for k in ["block_size", "queue_depth", "thread_count"] {
            assert!(b["libswapper"][k].as_u64().unwrap() > 0, "{k}: {b}");
        }
    }
    let text = std::fs::read_to_string(&svg).expect("the plot was written");
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    // One line per depth and panel, in the depth's colour (the first two of the palette),
    // and one per depth in the legend: plotters draws each solid line as a polyline.
    for colour in ["#1F77B4", "#D62728"] {
        let line = format!(r#"stroke="{colour}" stroke-width="2" points="#);
        assert_eq!(text.matches(&line).count(), 2 + 1, "lines in {colour}");
    }
    // And a dot per point and panel.
    assert_eq!(
        text.matches("<circle").count(),
        4 * 2,
        "one dot per point and panel"
    );
    for qd in [2, 8] {
        let label = format!("queue depth {qd}, 1 thread(s), ");
        assert!(text.contains(&label), "no legend entry {label:?}");
    }
    assert_empty(dir.path());
}

#[test]
fn optimizer_mode_steps_every_sub_group_and_reports_the_update_phase() {
    let dir = bench_dir();
    let v = run_cmd(
        dir.path(),
        &[
            "optimizer",
            "--params",
            "4MiB",
            "--sub-group-size",
            "262144",
            "--block-size",
            "256KiB",
        ],
    );
    let s = &v["settings"];
    assert_eq!(s["sub_groups"], 4, "{v}");
    assert_eq!(s["state_bytes"], 16 << 20, "{v}");
    // Two of the largest sub-group's four 1 MiB tensors.
    assert_eq!(s["ring_bytes"], 8 << 20, "{v}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{v}");
    let r = &runs[0];
    // Every tensor read (4 x 4 MiB), every state tensor written (3 x 4 MiB).
    assert_eq!(r["bytes_moved"], 28u64 << 20, "{v}");
    assert!(r["step_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(r["gb_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(r["cpu_s"].as_f64().unwrap() >= 0.0, "{v}");
    let locked = v["page_locked_bytes"].as_u64().unwrap();
    assert!(locked == 0 || locked == 8 << 20, "{v}");
    assert!(v["ring_peak_bytes"].as_u64().unwrap() <= 8 << 20, "{v}");
    assert!(v["read_ahead_peak"].as_u64().unwrap() >= 1, "{v}");
    assert_empty(dir.path());
}

/// tools/drives_bench.sh --smoke: the item-3 matrix's tooling on tiny unthrottled beds
/// (figures meaningless): a summary line per configuration, workload and op with the
/// ratio each target is about, the raw JSON kept, every bed torn down.
#[test]
fn drives_bench_smoke_runs_the_matrix_and_leaves_no_bed() {
    let out_dir = bench_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("drives_bench.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--smoke", "--bench", env!("CARGO_BIN_EXE_swapper-bench"), "--out"])
        .arg(out_dir.path())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for config in ["ext4-1", "ext4-2", "ext4-2half"] {
        for workload in ["many", "big"] {
            for op in ["new", "write", "read"] {
                let line = stdout
                    .lines()
                    .find(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() > 3 && f[0] == config && f[1] == workload && f[2] == op
                    })
                    .unwrap_or_else(|| panic!("no {config} {workload} {op} line in {stdout}"));
                let mib_s: f64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
                assert!(mib_s > 0.0, "{line}");
                match config {
                    "ext4-2" => assert!(line.contains("of 2 x one drive"), "{line}"),
                    "ext4-2half" => assert!(line.contains("of the ideal split"), "{line}"),
                    _ => {}
                }
            }
            let json = out_dir.path().join(format!("{config}-{workload}-1.json"));
            let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
            check_side(&v, "swapper");
            // The bed it ran in is gone.
            let bed =
                std::fs::read_to_string(out_dir.path().join(format!("{config}-{workload}-1.bed"))).unwrap();
            let name = bed
                .lines()
                .find_map(|l| l.strip_prefix("name="))
                .unwrap_or_else(|| panic!("no bed name in {bed}"));
            for p in [
                format!("/run/drive-bed/{name}.state"),
                format!("/mnt/drive-bed/{name}"),
                format!("/sys/fs/cgroup/blkio/{name}"),
            ] {
                assert!(!Path::new(&p).exists(), "{p} is left");
            }
        }
    }
    assert!(out_dir.path().join("summary.txt").exists());
}

#[test]
fn optimizer_mode_measures_the_device_limit_with_fio_alternating() {
    let dir = bench_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_swapper-bench"))
        .args([
            "optimizer",
            "--params",
            "2MiB",
            "--sub-group-size",
            "131072",
            "--block-size",
            "128KiB",
            "--vs-fio",
            "--runs",
            "2",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("swapper-bench runs");
    assert!(
        out.status.success(),
        "swapper-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["settings"];
    assert!(s["fio"].as_str().unwrap().starts_with("fio-"), "{v}");
    // fio moves what a step moves: every tensor read, every state tensor written.
    assert_eq!(s["bytes_read_per_step"], 8u64 << 20, "{v}");
    assert_eq!(s["bytes_written_per_step"], 6u64 << 20, "{v}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{v}");
    for r in runs {
        assert_eq!(r["bytes_moved"], 14u64 << 20, "{v}");
        let (step, fio) = (r["step_s"].as_f64().unwrap(), r["fio_s"].as_f64().unwrap());
        assert!(fio > 0.0 && step > 0.0, "{v}");
        let ratio = r["device_limit_ratio"].as_f64().unwrap();
        assert!((ratio - fio / step).abs() < 1e-9, "{v}");
    }
    for k in ["step_s", "gb_s", "cpu_s", "fio_s", "device_limit_ratio"] {
        let sp = &v["summary"][k];
        let (lo, med, hi) = (
            sp["min"].as_f64().unwrap(),
            sp["median"].as_f64().unwrap(),
            sp["max"].as_f64().unwrap(),
        );
        assert!(lo <= med && med <= hi, "{k}: {v}");
    }
    // fio's file went with the swap folder.
    assert_empty(dir.path());
    // The table names the ratio.
    let out = Command::new(env!("CARGO_BIN_EXE_swapper-bench"))
        .args([
            "optimizer",
            "--params",
            "1MiB",
            "--sub-group-size",
            "131072",
            "--vs-fio",
            "--runs",
            "1",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("swapper-bench runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("ratio to the device limit"),
        "{text}"
    );
    assert_empty(dir.path());
}
