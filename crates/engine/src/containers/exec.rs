//! `docker exec`: extra processes in a running container, run by its shim.

use std::sync::Arc;

use serde_json::{json, Value};

use super::lifecycle::{Exec, ExecState};
use super::{shim, spec, Containers};
use crate::error::{Error, Result};

impl Containers {
    /// `POST /containers/{id}/exec`.
    pub fn exec_create(&self, name_or_id: &str, body: &Value) -> Result<String> {
        let h = self.find(name_or_id)?;
        let rec = h.record();
        if !rec.state.running {
            return Err(Error::conflict(format!("Container {} is not running", rec.id)));
        }
        if rec.state.paused {
            return Err(Error::conflict(format!("Container {} is paused, unpause the container before exec", rec.id)));
        }
        let cmd: Vec<String> = body.get("Cmd").and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default();
        if cmd.is_empty() {
            return Err(Error::invalid("No exec command specified"));
        }
        let id = crate::digest::random_id();
        let exec = Arc::new(Exec {
            id: id.clone(),
            container: rec.id.clone(),
            config: body.clone(),
            state: std::sync::Mutex::new(ExecState::default()),
        });
        self.execs.lock().expect("exec lock poisoned").insert(id.clone(), exec);
        self.event(&h, &format!("exec_create: {}", cmd.join(" ")), &[("execID", id.clone())]);
        Ok(id)
    }

    fn find_exec(&self, id: &str) -> Result<Arc<Exec>> {
        self.execs
            .lock()
            .expect("exec lock poisoned")
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("No such exec instance: {id}")))
    }

    /// `POST /exec/{id}/start`. Returns the stream unless detached.
    pub async fn exec_start(&self, exec_id: &str, detach: bool) -> Result<(bool, Option<tokio::net::UnixStream>)> {
        let exec = self.find_exec(exec_id)?;
        {
            let mut st = exec.state.lock().expect("exec state poisoned");
            if st.started {
                return Err(Error::conflict(format!("Error: Exec command {exec_id} has already run")));
            }
            st.started = true;
        }
        let h = self.find(&exec.container)?;
        let rec = h.record();
        if !rec.state.running {
            return Err(Error::conflict(format!("Container {} is not running", rec.id)));
        }
        let state_dir = self.paths.container_state_dir(&rec.id);
        let bundle: Value = std::fs::read(state_dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Error::internal("container bundle missing"))?;
        let c = &exec.config;
        let tty = c.get("Tty").and_then(Value::as_bool).unwrap_or(false);
        let stdin = c.get("AttachStdin").and_then(Value::as_bool).unwrap_or(false);
        let mut process = bundle.get("process").cloned().unwrap_or_else(|| json!({}));
        process["args"] = c.get("Cmd").cloned().unwrap_or(json!([]));
        process["terminal"] = json!(tty);
        let mut env: Vec<String> = process.get("env").and_then(|e| serde_json::from_value(e.clone()).ok()).unwrap_or_default();
        for e in c.get("Env").and_then(|e| serde_json::from_value::<Vec<String>>(e.clone()).ok()).unwrap_or_default() {
            let key = e.split('=').next().unwrap_or_default().to_owned();
            env.retain(|x| x.split('=').next() != Some(key.as_str()));
            env.push(e);
        }
        process["env"] = json!(env);
        if let Some(wd) = c.get("WorkingDir").and_then(Value::as_str).filter(|w| !w.is_empty()) {
            process["cwd"] = json!(wd);
        }
        if let Some(user) = c.get("User").and_then(Value::as_str).filter(|u| !u.is_empty()) {
            let (uid, gid, gids) = spec::resolve_user(&self.paths.container_rootfs(&rec.id), user).map_err(|e| Error::invalid(e.to_string()))?;
            process["user"] = json!({"uid": uid, "gid": gid, "additionalGids": gids});
        }
        if c.get("Privileged").and_then(Value::as_bool).unwrap_or(false) {
            if let Some(caps) = process.get_mut("capabilities") {
                let all = json!(spec::all_capabilities());
                for k in ["bounding", "effective", "permitted"] {
                    caps[k] = all.clone();
                }
            }
        }
        let req = json!({"op": "exec", "process": process, "tty": tty, "stdin": stdin, "detach": detach});
        let (answer, stream) = shim::open_stream(&state_dir, req).await?;
        let pid = answer.get("exec_pid").and_then(Value::as_i64).unwrap_or(0);
        {
            let mut st = exec.state.lock().expect("exec state poisoned");
            st.running = true;
            st.pid = pid;
        }
        let cmd: Vec<String> = c.get("Cmd").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
        self.event(&h, &format!("exec_start: {}", cmd.join(" ")), &[("execID", exec.id.clone())]);
        Ok((tty, if detach { None } else { Some(stream) }))
    }

    /// `GET /exec/{id}/json`.
    pub fn exec_inspect(&self, exec_id: &str) -> Result<Value> {
        let exec = self.find_exec(exec_id)?;
        let mut st = exec.state.lock().expect("exec state poisoned").clone();
        if st.running {
            let state_dir = self.paths.container_state_dir(&exec.container);
            let exit_file = state_dir.join(format!("exec-{}.exit", st.pid));
            let container_gone = self.find(&exec.container).map(|h| !h.record().state.running).unwrap_or(true);
            if let Some(code) = std::fs::read(&exit_file).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).and_then(|v| v.get("exit_code").and_then(Value::as_i64)) {
                st.running = false;
                st.exit_code = Some(code);
            } else if container_gone {
                st.running = false;
                st.exit_code = Some(st.exit_code.unwrap_or(137));
            }
            *exec.state.lock().expect("exec state poisoned") = st.clone();
        }
        let c = &exec.config;
        let cmd: Vec<String> = c.get("Cmd").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
        let (entry, args) = cmd.split_first().map(|(a, b)| (a.clone(), b.to_vec())).unwrap_or_default();
        Ok(json!({
            "ID": exec.id,
            "Running": st.running,
            "ExitCode": st.exit_code,
            "ProcessConfig": {
                "tty": c.get("Tty").and_then(Value::as_bool).unwrap_or(false),
                "entrypoint": entry,
                "arguments": args,
                "privileged": c.get("Privileged").and_then(Value::as_bool).unwrap_or(false),
                "user": c.get("User").and_then(Value::as_str).unwrap_or_default(),
            },
            "OpenStdin": c.get("AttachStdin").and_then(Value::as_bool).unwrap_or(false),
            "OpenStderr": c.get("AttachStderr").and_then(Value::as_bool).unwrap_or(false),
            "OpenStdout": c.get("AttachStdout").and_then(Value::as_bool).unwrap_or(false),
            "CanRemove": false,
            "ContainerID": exec.container,
            "DetachKeys": "",
            "Pid": st.pid,
        }))
    }

    /// `POST /exec/{id}/resize`: sets the exec's terminal size.
    pub async fn exec_resize(&self, exec_id: &str, width: u16, height: u16) -> Result<()> {
        let exec = self.find_exec(exec_id)?;
        let st = exec.state.lock().expect("exec state poisoned").clone();
        if !st.running {
            return Err(Error::conflict(format!("Exec {exec_id} is not running")));
        }
        let state_dir = self.paths.container_state_dir(&exec.container);
        shim::request(&state_dir, json!({"op": "resize", "width": width, "height": height, "exec_pid": st.pid})).await.map(|_| ())
    }
}
