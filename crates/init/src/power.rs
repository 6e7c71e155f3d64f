//! The ACPI power button (QMP `system_powerdown`): the `button` driver
//! reports KEY_POWER on an evdev device; a watcher thread per device sets the
//! shutdown flag the main loop polls.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set when a power-off was requested from a thread.
pub static REQUESTED: AtomicBool = AtomicBool::new(false);

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// struct input_event on 64-bit: timeval (16) + type (2) + code (2) + value (4).
const EVENT_SIZE: usize = 24;

/// Whether one input_event record is a power-button press.
pub fn is_power_press(ev: &[u8]) -> bool {
    if ev.len() < EVENT_SIZE {
        return false;
    }
    let kind = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

fn device_name(event: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/input/{event}/device/name")).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Starts watchers on every /dev/input/event* that appears within `wait`.
pub fn watch(wait: Duration) {
    let spawned = std::thread::Builder::new().name("power-scan".into()).spawn(move || {
        let deadline = std::time::Instant::now() + wait;
        let mut watching = std::collections::BTreeSet::new();
        loop {
            if let Ok(rd) = std::fs::read_dir("/dev/input") {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !name.starts_with("event") || !watching.insert(name.clone()) {
                        continue;
                    }
                    let label = device_name(&name);
                    let path = e.path();
                    let r = std::thread::Builder::new().name(format!("power-{name}")).spawn(move || {
                        let mut f = match std::fs::File::open(&path) {
                            Ok(f) => f,
                            Err(e) => {
                                crate::log!("power button: open {}: {e}", path.display());
                                return;
                            }
                        };
                        let mut ev = [0u8; EVENT_SIZE];
                        while f.read_exact(&mut ev).is_ok() {
                            if is_power_press(&ev) {
                                crate::log!("power button pressed ({label})");
                                REQUESTED.store(true, Ordering::SeqCst);
                            }
                        }
                    });
                    if let Err(e) = r {
                        crate::log!("power button: spawn watcher: {e}");
                    }
                }
            }
            if std::time::Instant::now() > deadline {
                if watching.is_empty() {
                    crate::log!("power button: no input devices; QMP system_powerdown will not work (use SIGTERM or the shell's poweroff)");
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    if let Err(e) = spawned {
        crate::log!("power button: spawn scanner: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut e = [0u8; EVENT_SIZE];
        e[16..18].copy_from_slice(&kind.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn power_key_press_is_recognised_and_release_is_not() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)));
        assert!(!is_power_press(&event(0, 0, 0)));
        assert!(!is_power_press(&event(EV_KEY, 30, 1)));
    }
}
