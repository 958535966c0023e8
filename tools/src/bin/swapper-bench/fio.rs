//! The fio side: the same file, direction, block size and depth, measured by fio.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::report::Sample;

/// fio's version line, or None when fio is not on PATH.
pub fn version() -> Option<String> {
    let out = Command::new("fio").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// How fio is asked to do what our engine does.
#[derive(Clone, Debug)]
pub struct Job {
    /// io_uring, libaio or psync.
    pub ioengine: &'static str,
    /// fio's `numjobs`.
    pub numjobs: u64,
    /// fio's `iodepth` per job.
    pub iodepth: u64,
    /// Bytes each job moves (its region of the file, one after the other).
    pub job_size: u64,
    pub block_size: u64,
    pub direct: bool,
}

impl Job {
    /// The fio job matching our engine's settings.
    ///
    /// - io_uring / libaio: each of our worker threads keeps `queue_depth` requests in
    ///   flight on its own ring, so fio gets one job per thread with `iodepth=queue_depth`,
    ///   each job on its own slice of the file (`size/numjobs`, `offset_increment`), with
    ///   `group_reporting` adding them up. This keeps the same number of submitting threads
    ///   and the same total in flight (`queue_depth * threads`); a single job with
    ///   `iodepth=queue_depth*threads` would put one thread against our several. With one
    ///   thread (the default) both forms are the same job.
    /// - psync (our blocking backend): each of our `queue_depth * threads` threads makes
    ///   one blocking call at a time, and psync's iodepth is always 1, so fio gets that many
    ///   jobs instead.
    ///
    /// Each slice is rounded down to whole blocks; fio's throughput is bytes over its own
    /// time, so a slightly shorter total does not bias it.
    pub fn new(
        ioengine: &'static str,
        size: u64,
        block_size: u64,
        queue_depth: u32,
        threads: u32,
        direct: bool,
    ) -> Job {
        let (numjobs, iodepth) = if ioengine == "psync" {
            (u64::from(queue_depth) * u64::from(threads), 1)
        } else {
            (u64::from(threads), u64::from(queue_depth))
        };
        let job_size = (size / numjobs / block_size * block_size).max(block_size);
        Job {
            ioengine,
            numjobs,
            iodepth,
            job_size,
            block_size,
            direct,
        }
    }

    /// fio's arguments for one run.
    pub fn args(&self, path: &Path, write: bool) -> Vec<String> {
        let mut a = vec![
            "--name=swapper-bench".to_string(),
            format!("--filename={}", path.display()),
            format!("--rw={}", if write { "write" } else { "read" }),
            format!("--bs={}", self.block_size),
            format!("--ioengine={}", self.ioengine),
            format!("--iodepth={}", self.iodepth),
            format!("--numjobs={}", self.numjobs),
            format!("--size={}", self.job_size),
            format!("--direct={}", u8::from(self.direct)),
            "--output-format=json".to_string(),
        ];
        if self.numjobs > 1 {
            a.push(format!("--offset_increment={}", self.job_size));
            a.push("--group_reporting".to_string());
        }
        a
    }

    /// Runs fio once; its throughput and CPU from its JSON report.
    pub fn run(&self, path: &Path, write: bool) -> Result<Sample> {
        let args = self.args(path, write);
        let child = Command::new("fio")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start fio")?;
        crate::cleanup::set_child(Some(child.id()));
        let out = child.wait_with_output();
        crate::cleanup::set_child(None);
        crate::cleanup::wait_if_interrupted();
        let out = out.context("fio did not finish")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "fio {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
            );
        }
        parse(&stdout, write).with_context(|| format!("cannot read the report of fio {}", args.join(" ")))
    }
}

/// Reads one run out of fio's JSON report (text before the first '{' is skipped: fio may
/// print notes there). CPU seconds are fio's usr_cpu + sys_cpu (percent of the job's
/// run time) times that run time; with group_reporting both are summed over the jobs.
pub fn parse(stdout: &str, write: bool) -> Result<Sample> {
    let start = stdout
        .find('{')
        .ok_or_else(|| anyhow!("no JSON in fio's output: {}", stdout.trim()))?;
    let v: Value = serde_json::Deserializer::from_str(&stdout[start..])
        .into_iter::<Value>()
        .next()
        .ok_or_else(|| anyhow!("empty fio report"))?
        .context("fio's report is not valid JSON")?;
    let job = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .ok_or_else(|| anyhow!("fio's report has no jobs"))?;
    if let Some(err) = job.get("error").and_then(Value::as_i64) {
        if err != 0 {
            bail!("fio's job failed with error {err}");
        }
    }
    let dir = job.get(if write { "write" } else { "read" }).ok_or_else(|| {
        anyhow!(
            "fio's report has no {} section",
            if write { "write" } else { "read" }
        )
    })?;
    let num = |v: &Value, k: &str| -> Result<f64> {
        v.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("fio's report lacks {k}"))
    };
    let bw = num(dir, "bw_bytes")?;
    let bytes = num(dir, "io_bytes")? as u64;
    if bw <= 0.0 || bytes == 0 {
        bail!("fio moved no data");
    }
    let runtime_s = num(job, "job_runtime")? / 1000.0;
    let cpu = (num(job, "usr_cpu")? + num(job, "sys_cpu")?) / 100.0 * runtime_s;
    // Seconds from fio's own bandwidth, so that MiB/s is exactly fio's bw_bytes.
    Ok(Sample::new(bytes, bytes as f64 / bw, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_report() {
        let text = r#"note: something
{"fio version":"fio-3.33","jobs":[{"jobname":"x","error":0,"job_runtime":1000,
 "usr_cpu":10.0,"sys_cpu":30.0,
 "read":{"io_bytes":2147483648,"bw_bytes":2147483648},
 "write":{"io_bytes":0,"bw_bytes":0}}]}"#;
        let s = parse(text, false).unwrap();
        assert!((s.mib_s - 2048.0).abs() < 1e-6);
        assert!((s.cpu_s - 0.4).abs() < 1e-9);
        assert!((s.cpu_s_per_gib - 0.2).abs() < 1e-9);
        assert!(parse(text, true).is_err());
        assert!(parse("fio: no such file", false).is_err());
    }

    #[test]
    fn jobs_match_the_engine() {
        let p = Path::new("/x/f");
        let one = Job::new("io_uring", 2 << 30, 1 << 20, 8, 1, true);
        let a = one.args(p, true);
        assert!(a.contains(&"--iodepth=8".to_string()));
        assert!(a.contains(&"--numjobs=1".to_string()));
        assert!(a.contains(&format!("--size={}", 2u64 << 30)));
        assert!(!a.iter().any(|x| x.starts_with("--offset_increment")));
        let four = Job::new("io_uring", 2 << 30, 1 << 20, 8, 4, true);
        let a = four.args(p, false);
        assert!(a.contains(&"--numjobs=4".to_string()));
        assert!(a.contains(&format!("--offset_increment={}", 512u64 << 20)));
        let sync = Job::new("psync", 2 << 30, 1 << 20, 8, 1, false);
        assert_eq!((sync.numjobs, sync.iodepth), (8, 1));
        assert!(sync.args(p, true).contains(&"--direct=0".to_string()));
    }
}
