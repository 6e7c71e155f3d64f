//! Resource usage of running containers from their cgroups (v1 on hosts
//! like this one, v2 in the VM), and `docker top`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::Containers;
use crate::error::{Error, Result};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn is_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The container's cgroup directory for `controller` (v1) or its unified
/// directory (v2).
fn cgroup_dir(id: &str, controller: &str) -> PathBuf {
    if is_v2() {
        Path::new(CGROUP_ROOT).join("berth").join(id)
    } else {
        Path::new(CGROUP_ROOT).join(controller).join("berth").join(id)
    }
}

/// PIDs in the container's cgroup.
pub fn pids(id: &str) -> Vec<i64> {
    let dir = cgroup_dir(id, "pids");
    let dir = if dir.exists() { dir } else { cgroup_dir(id, "memory") };
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Total CPU time of the host in nanoseconds, from /proc/stat, as dockerd
/// computes `system_cpu_usage`.
fn system_cpu_ns() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return 0 };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0 };
    let ticks: u64 = line.split_whitespace().skip(1).take(7).filter_map(|v| v.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on Linux.
    ticks * 10_000_000
}

fn kv_file(p: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(p)
        .map(|s| {
            s.lines()
                .filter_map(|l| {
                    let mut it = l.split_whitespace();
                    Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One stats sample in the Engine API's shape.
pub fn sample(id: &str, name: &str, pid: i64) -> Value {
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (cpu_total, percpu, mem_usage, mem_limit, mem_stats, pids_current, io) = if is_v2() {
        let dir = cgroup_dir(id, "");
        let cpu = kv_file(&dir.join("cpu.stat"));
        let usage = cpu.iter().find(|(k, _)| k == "usage_usec").map(|(_, v)| v * 1000).unwrap_or(0);
        let mem = read_u64(&dir.join("memory.current")).unwrap_or(0);
        let limit = std::fs::read_to_string(dir.join("memory.max")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(u64::MAX);
        let stats: serde_json::Map<String, Value> = kv_file(&dir.join("memory.stat")).into_iter().map(|(k, v)| (k, json!(v))).collect();
        let io: Vec<Value> = std::fs::read_to_string(dir.join("io.stat"))
            .unwrap_or_default()
            .lines()
            .flat_map(|l| {
                let mut parts = l.split_whitespace();
                let dev = parts.next().unwrap_or("0:0");
                let (major, minor) = dev.split_once(':').unwrap_or(("0", "0"));
                let (major, minor): (u64, u64) = (major.parse().unwrap_or(0), minor.parse().unwrap_or(0));
                parts
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(move |(k, v)| match k {
                        "rbytes" => Some(json!({"major": major, "minor": minor, "op": "read", "value": v.parse::<u64>().unwrap_or(0)})),
                        "wbytes" => Some(json!({"major": major, "minor": minor, "op": "write", "value": v.parse::<u64>().unwrap_or(0)})),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        (usage, Value::Null, mem, limit, stats, read_u64(&dir.join("pids.current")).unwrap_or(0), io)
    } else {
        let cpu = cgroup_dir(id, "cpuacct");
        let usage = read_u64(&cpu.join("cpuacct.usage")).unwrap_or(0);
        let percpu: Vec<u64> = std::fs::read_to_string(cpu.join("cpuacct.usage_percpu"))
            .map(|s| s.split_whitespace().filter_map(|v| v.parse().ok()).collect())
            .unwrap_or_default();
        let mem = cgroup_dir(id, "memory");
        let usage_mem = read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0);
        let limit = read_u64(&mem.join("memory.limit_in_bytes")).unwrap_or(u64::MAX);
        let stats: serde_json::Map<String, Value> = kv_file(&mem.join("memory.stat")).into_iter().map(|(k, v)| (k, json!(v))).collect();
        let io: Vec<Value> = std::fs::read_to_string(cgroup_dir(id, "blkio").join("blkio.throttle.io_service_bytes_recursive"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut p = l.split_whitespace();
                let dev = p.next()?;
                let op = p.next()?;
                let value: u64 = p.next()?.parse().ok()?;
                let (major, minor) = dev.split_once(':')?;
                Some(json!({"major": major.parse::<u64>().ok()?, "minor": minor.parse::<u64>().ok()?, "op": op, "value": value}))
            })
            .collect();
        (usage, json!(percpu), usage_mem, limit, stats, read_u64(&cgroup_dir(id, "pids").join("pids.current")).unwrap_or(0), io)
    };
    let host_mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(u64::MAX);
    json!({
        "read": crate::timefmt::now_rfc3339(),
        "preread": "0001-01-01T00:00:00Z",
        "name": format!("/{name}"),
        "id": id,
        "pids_stats": {"current": pids_current},
        "blkio_stats": {"io_service_bytes_recursive": io, "io_serviced_recursive": null, "io_queue_recursive": null,
            "io_service_time_recursive": null, "io_wait_time_recursive": null, "io_merged_recursive": null,
            "io_time_recursive": null, "sectors_recursive": null},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": {
            "cpu_usage": {"total_usage": cpu_total, "percpu_usage": percpu, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "system_cpu_usage": system_cpu_ns(),
            "online_cpus": ncpu,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        },
        "memory_stats": {"usage": mem_usage, "limit": mem_limit.min(host_mem), "stats": mem_stats},
        "networks": network_stats(pid),
    })
}

/// Interface counters from the container's network namespace.
fn network_stats(pid: i64) -> Value {
    let mut out = serde_json::Map::new();
    if pid <= 0 {
        return Value::Object(out);
    }
    let Ok(dev) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else { return Value::Object(out) };
    for line in dev.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else { continue };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if v.len() < 16 {
            continue;
        }
        out.insert(name.to_owned(), json!({
            "rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2], "rx_dropped": v[3],
            "tx_bytes": v[8], "tx_packets": v[9], "tx_errors": v[10], "tx_dropped": v[11],
        }));
    }
    Value::Object(out)
}

impl Containers {
    /// A stats sample for a running container (zeros when stopped, as
    /// dockerd reports them).
    pub fn stats(&self, name_or_id: &str) -> Result<Value> {
        let h = self.find(name_or_id)?;
        let r = h.record();
        if !r.state.running {
            return Ok(json!({"read": "0001-01-01T00:00:00Z", "preread": "0001-01-01T00:00:00Z", "name": format!("/{}", r.name), "id": r.id,
                "pids_stats": {}, "blkio_stats": {}, "cpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
                "precpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}}, "memory_stats": {}, "networks": {}}));
        }
        Ok(sample(&r.id, &r.name, r.state.pid))
    }

    /// `GET /containers/{id}/top`: the host's `ps` output, filtered to the
    /// container's processes.
    pub fn top(&self, name_or_id: &str, ps_args: &str) -> Result<Value> {
        let h = self.find(name_or_id)?;
        let r = h.record();
        if !r.state.running {
            return Err(Error::conflict(format!("Container {} is not running", r.id)));
        }
        let args: Vec<&str> = if ps_args.trim().is_empty() { vec!["-ef"] } else { ps_args.split_whitespace().collect() };
        let out = std::process::Command::new("ps").args(&args).output().map_err(|e| Error::internal(format!("run ps: {e}")))?;
        if !out.status.success() {
            return Err(Error::internal(format!("ps: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let titles: Vec<&str> = header.split_whitespace().collect();
        let pid_col = titles.iter().position(|t| *t == "PID").ok_or_else(|| Error::invalid("Couldn't find PID field in ps output"))?;
        let pids = pids(&r.id);
        let mut procs = Vec::new();
        for l in lines {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let Some(pid) = fields.get(pid_col).and_then(|p| p.parse::<i64>().ok()) else { continue };
            if !pids.contains(&pid) {
                continue;
            }
            // The last column (the command) may contain spaces.
            let mut row: Vec<String> = fields[..titles.len().saturating_sub(1).min(fields.len())].iter().map(|s| s.to_string()).collect();
            row.push(fields[titles.len().saturating_sub(1).min(fields.len())..].join(" "));
            procs.push(row);
        }
        Ok(json!({"Titles": titles, "Processes": procs}))
    }
}
