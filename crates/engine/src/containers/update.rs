//! `docker update`: new resource limits and restart policy for an existing
//! container (moby `daemon/update.go` and `container.UpdateContainer`,
//! read for the facts).
//!
//! Owns merging an update into the record's `HostConfig` with dockerd's
//! rules and applying it to a running container's cgroup through the OCI
//! runtime (`<runtime> --root <runtime root> update --resources <file>
//! <id>`, which crun and runc both provide). A stopped container only gets
//! its record changed; the next start builds its spec from it.
//!
//! crun's `update` works on this project's hybrid cgroup hosts without the
//! private mount namespace the shim needs for `create`. One limit is
//! written directly: an unlimited PIDs limit, which crun 1.8 would write to
//! cgroup v1's `pids.max` as `-1` (EINVAL) where `max` is meant.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{spec, Containers};
use crate::error::{Error, Kind, Result};

/// dockerd's warning when the host cannot weigh block I/O.
const NO_BLKIO_WEIGHT: &str = "Your kernel does not support Block I/O weight or the cgroup is not mounted. Weight discarded.";

fn int(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

fn string<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// An update's conflict with the container's current settings (409).
fn conflict(id: &str, msg: impl std::fmt::Display) -> Error {
    Error::conflict(format!("Cannot update container {id}: {msg}"))
}

/// Folds `update` into `current` (a record's `HostConfig`) the way dockerd
/// does: zero values leave a setting alone, a set restart policy replaces
/// the old one. Returns the message of a conflicting update.
pub(crate) fn merge(current: &Value, update: &Value) -> std::result::Result<Value, String> {
    let mut hc = match current {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    // dockerd stores twice the memory as swap at create when only memory
    // is limited; updates are checked against that.
    if int(&hc, "Memory") > 0 && int(&hc, "MemorySwap") == 0 {
        hc["MemorySwap"] = json!(int(&hc, "Memory").saturating_mul(2));
    }
    let nano = int(update, "NanoCpus");
    if nano > 0 && int(&hc, "CpuPeriod") > 0 {
        return Err("Conflicting options: Nano CPUs cannot be updated as CPU Period has already been set".into());
    }
    if nano > 0 && int(&hc, "CpuQuota") > 0 {
        return Err("Conflicting options: Nano CPUs cannot be updated as CPU Quota has already been set".into());
    }
    if int(update, "CpuPeriod") > 0 && int(&hc, "NanoCpus") > 0 {
        return Err("Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set".into());
    }
    if int(update, "CpuQuota") > 0 && int(&hc, "NanoCpus") > 0 {
        return Err("Conflicting options: CPU Quota cannot be updated as NanoCPUs has already been set".into());
    }
    let memory = int(update, "Memory");
    if memory != 0 && memory > int(&hc, "MemorySwap") && int(update, "MemorySwap") == 0 {
        return Err("Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time".into());
    }
    for key in [
        "BlkioWeight",
        "CpuShares",
        "NanoCpus",
        "CpuPeriod",
        "CpuQuota",
        "Memory",
        "MemorySwap",
        "MemoryReservation",
        "KernelMemory",
        "CpuRealtimePeriod",
        "CpuRealtimeRuntime",
    ] {
        let v = int(update, key);
        if v != 0 {
            hc[key] = json!(v);
        }
    }
    for key in ["CpusetCpus", "CpusetMems"] {
        let v = string(update, key);
        if !v.is_empty() {
            hc[key] = json!(v);
        }
    }
    if let Some(pids) = update.get("PidsLimit").and_then(Value::as_i64) {
        // 0 and negative both mean unlimited; dockerd keeps 0.
        hc["PidsLimit"] = json!(pids.max(0));
    }
    if let Some(policy) = update.get("RestartPolicy").filter(|p| !string(p, "Name").is_empty()) {
        let none = string(policy, "Name") == "no";
        if hc.get("AutoRemove").and_then(Value::as_bool).unwrap_or(false) && !none {
            return Err("Restart policy cannot be updated because AutoRemove is enabled for the container".into());
        }
        hc["RestartPolicy"] = json!({"Name": string(policy, "Name"), "MaximumRetryCount": int(policy, "MaximumRetryCount")});
    }
    Ok(hc)
}

/// `linux.resources` for the runtime's `update`: only what the request
/// sets, as dockerd hands its request's resources to containerd. The PIDs
/// limit is returned apart when it lifts the limit (see the module doc).
pub(crate) fn oci_resources(update: &Value) -> (Map<String, Value>, bool) {
    let mut res = Map::new();
    let mut memory = Map::new();
    for (key, oci) in [("Memory", "limit"), ("MemoryReservation", "reservation"), ("MemorySwap", "swap")] {
        let v = int(update, key);
        if v != 0 {
            memory.insert(oci.into(), v.into());
        }
    }
    if !memory.is_empty() {
        res.insert("memory".into(), memory.into());
    }
    let mut cpu = Map::new();
    let shares = int(update, "CpuShares");
    if shares > 0 {
        cpu.insert("shares".into(), shares.into());
    }
    let nano = int(update, "NanoCpus");
    if nano > 0 {
        const PERIOD: i64 = 100_000;
        cpu.insert("period".into(), PERIOD.into());
        cpu.insert("quota".into(), (nano.saturating_mul(PERIOD) / 1_000_000_000).into());
    }
    for (key, oci) in [("CpuPeriod", "period"), ("CpuQuota", "quota"), ("CpuRealtimePeriod", "realtimePeriod"), ("CpuRealtimeRuntime", "realtimeRuntime")] {
        let v = int(update, key);
        if v != 0 {
            cpu.insert(oci.into(), v.into());
        }
    }
    for (key, oci) in [("CpusetCpus", "cpus"), ("CpusetMems", "mems")] {
        let v = string(update, key);
        if !v.is_empty() {
            cpu.insert(oci.into(), v.into());
        }
    }
    if !cpu.is_empty() {
        res.insert("cpu".into(), cpu.into());
    }
    let mut unlimited_pids = false;
    match update.get("PidsLimit").and_then(Value::as_i64) {
        Some(l) if l > 0 => {
            res.insert("pids".into(), json!({"limit": l}));
        }
        Some(_) => unlimited_pids = true,
        None => {}
    }
    let weight = int(update, "BlkioWeight");
    if weight > 0 {
        res.insert("blockIO".into(), json!({"weight": weight}));
    }
    (res, unlimited_pids)
}

/// Whether the host can weigh block I/O (dockerd's `sysinfo.BlkioWeight`).
fn blkio_weight_supported() -> bool {
    if let Ok(controllers) = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
        return controllers.split_whitespace().any(|c| c == "io");
    }
    Path::new("/sys/fs/cgroup/blkio/blkio.weight").exists()
}

/// The `pids.max` file of a cgroup path from the bundle (`/berth/<id>`).
fn pids_max_file(cgroups_path: &str) -> PathBuf {
    let rel = cgroups_path.trim_start_matches('/');
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Path::new("/sys/fs/cgroup").join(rel).join("pids.max")
    } else {
        Path::new("/sys/fs/cgroup/pids").join(rel).join("pids.max")
    }
}

impl Containers {
    /// `POST /containers/{id}/update`. Returns dockerd's warnings.
    pub async fn update(self: &Arc<Self>, name_or_id: &str, body: &Value) -> Result<Vec<String>> {
        let mut body = match body {
            Value::Object(m) => Value::Object(m.clone()),
            _ => return Err(Error::invalid("invalid JSON: expected an object")),
        };
        let mut warnings = Vec::new();
        // Checked like create, except that an update may change the swap
        // limit alone.
        let mut checked = body.clone();
        if int(&checked, "Memory") == 0 && int(&checked, "MemorySwap") > 0 {
            checked["MemorySwap"] = json!(0);
        }
        spec::validate(&Value::Null, &checked).map_err(|e| Error::invalid(e.to_string()))?;
        if int(&body, "BlkioWeight") > 0 && !blkio_weight_supported() {
            warnings.push(NO_BLKIO_WEIGHT.to_owned());
            body["BlkioWeight"] = json!(0);
        }

        let h = self.find(name_or_id)?;
        let _op = h.op.lock().await;
        let rec = h.record();
        if rec.state.status == "removing" || rec.state.dead {
            return Err(conflict(&rec.id, "container is marked for removal and cannot be \"update\""));
        }
        let host_config = merge(&rec.host_config, &body).map_err(|m| conflict(&rec.id, m))?;
        if rec.state.running {
            self.apply_resources(&rec.id, &rec.runtime, &body).await?;
        }
        h.update(|r| r.host_config = host_config);
        self.persist(&h)?;
        self.event(&h, "update", &[]);
        Ok(warnings)
    }

    /// Applies an update's resources to a running container's cgroup.
    async fn apply_resources(&self, id: &str, runtime: &str, update: &Value) -> Result<()> {
        let failed = |msg: String| Error::new(Kind::Internal, format!("Cannot update container {id}: {msg}"));
        let state_dir = self.paths.container_state_dir(id);
        let (resources, unlimited_pids) = oci_resources(update);
        if !resources.is_empty() {
            let binary = self.runtime.runtimes.get(runtime).ok_or_else(|| failed(format!("unknown runtime {runtime}")))?;
            let file = state_dir.join(format!("update-{:016x}.json", rand::random::<u64>()));
            std::fs::write(&file, Value::Object(resources).to_string()).map_err(|e| failed(format!("write resources: {e}")))?;
            let out = tokio::process::Command::new(binary)
                .arg("--root")
                .arg(self.paths.runtime_root())
                .arg("update")
                .arg("--resources")
                .arg(&file)
                .arg(id)
                .stdin(std::process::Stdio::null())
                .output()
                .await;
            let _ = std::fs::remove_file(&file);
            let out = out.map_err(|e| failed(format!("run {}: {e}", binary.display())))?;
            if !out.status.success() {
                let text = String::from_utf8_lossy(&out.stderr).lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
                tracing::warn!(container_id = %id, error = %text, "runtime update failed");
                return Err(failed(if text.is_empty() { format!("{} update: {}", binary.display(), out.status) } else { text }));
            }
        }
        if unlimited_pids {
            let cgroups_path = std::fs::read(state_dir.join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v.pointer("/linux/cgroupsPath").and_then(Value::as_str).map(str::to_owned))
                .ok_or_else(|| failed("container bundle missing".into()))?;
            let file = pids_max_file(&cgroups_path);
            std::fs::write(&file, "max").map_err(|e| failed(format!("write {}: {e}", file.display())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_values_leave_settings_alone() {
        let current = json!({"Memory": 64 << 20, "MemorySwap": 128 << 20, "CpuShares": 512, "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0}});
        let update = json!({"Memory": 0, "CpuShares": 0, "CpusetCpus": "0", "PidsLimit": null, "RestartPolicy": {"Name": "", "MaximumRetryCount": 0}});
        let hc = merge(&current, &update).unwrap();
        assert_eq!((hc["Memory"].as_i64(), hc["CpuShares"].as_i64(), hc["CpusetCpus"].as_str()), (Some(64 << 20), Some(512), Some("0")));
        assert_eq!(hc["RestartPolicy"]["Name"], "always");
    }

    #[test]
    fn memory_above_the_swap_limit_needs_a_new_swap_limit() {
        let err = merge(&json!({}), &json!({"Memory": 64 << 20})).unwrap_err();
        assert_eq!(err, "Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time");
        let hc = merge(&json!({}), &json!({"Memory": 64 << 20, "MemorySwap": 128 << 20})).unwrap();
        assert_eq!((hc["Memory"].as_i64(), hc["MemorySwap"].as_i64()), (Some(64 << 20), Some(128 << 20)));
        // Memory alone at create means twice as much swap.
        let hc = merge(&json!({"Memory": 32 << 20}), &json!({"Memory": 48 << 20})).unwrap();
        assert_eq!((hc["Memory"].as_i64(), hc["MemorySwap"].as_i64()), (Some(48 << 20), Some(64 << 20)));
    }

    #[test]
    fn nano_cpus_and_quota_conflict_with_each_other() {
        assert!(merge(&json!({"NanoCpus": 500_000_000}), &json!({"CpuQuota": 20000})).unwrap_err().starts_with("Conflicting options: CPU Quota"));
        assert!(merge(&json!({"CpuPeriod": 50000}), &json!({"NanoCpus": 1_000_000_000})).unwrap_err().starts_with("Conflicting options: Nano CPUs"));
    }

    #[test]
    fn restart_policy_and_auto_remove() {
        let err = merge(&json!({"AutoRemove": true}), &json!({"RestartPolicy": {"Name": "always"}})).unwrap_err();
        assert_eq!(err, "Restart policy cannot be updated because AutoRemove is enabled for the container");
        assert!(merge(&json!({"AutoRemove": true}), &json!({"RestartPolicy": {"Name": "no"}})).is_ok());
        let hc = merge(&json!({}), &json!({"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}})).unwrap();
        assert_eq!(hc["RestartPolicy"], json!({"Name": "on-failure", "MaximumRetryCount": 2}));
    }

    #[test]
    fn unlimited_pids_are_kept_as_zero_and_written_apart() {
        assert_eq!(merge(&json!({"PidsLimit": 50}), &json!({"PidsLimit": -1})).unwrap()["PidsLimit"], 0);
        let (res, unlimited) = oci_resources(&json!({"PidsLimit": -1}));
        assert!(res.is_empty() && unlimited);
        let (res, unlimited) = oci_resources(&json!({"PidsLimit": 20, "NanoCpus": 500_000_000, "Memory": 64 << 20, "MemorySwap": -1}));
        assert!(!unlimited);
        assert_eq!(Value::Object(res), json!({"pids": {"limit": 20}, "cpu": {"period": 100000, "quota": 50000}, "memory": {"limit": 64 << 20, "swap": -1}}));
    }
}
