//! The event bus behind `/events`: every state change the engine makes is
//! published here, kept in a short history for `since`, and streamed live.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

/// One event, in dockerd's wire shape (new fields plus the legacy
/// `status`/`id`/`from` ones older clients read).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    #[serde(rename = "status", skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(rename = "id", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "from", skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(rename = "Type")]
    pub typ: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: String,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

const HISTORY: usize = 1024;

/// Publishes and replays events.
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    history: Mutex<VecDeque<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        EventBus { tx, history: Mutex::new(VecDeque::with_capacity(64)) }
    }

    /// Records and broadcasts an event of `typ` (`image`, `container`...).
    pub fn publish(&self, typ: &str, action: &str, id: &str, attributes: BTreeMap<String, String>) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let legacy = typ == "image" || typ == "container";
        let event = Event {
            status: legacy.then(|| action.to_owned()),
            id: legacy.then(|| id.to_owned()),
            from: (typ == "container").then(|| attributes.get("image").cloned()).flatten(),
            typ: typ.to_owned(),
            action: action.to_owned(),
            actor: Actor { id: id.to_owned(), attributes },
            scope: "local".to_owned(),
            time: now.as_secs() as i64,
            time_nano: now.as_nanos() as i64,
        };
        {
            let mut h = self.history.lock().expect("event history lock poisoned");
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(event.clone());
        }
        let _ = self.tx.send(event);
    }

    /// Past events (oldest first) and a receiver for the ones after them,
    /// taken together so none falls in between.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let h = self.history.lock().expect("event history lock poisoned");
        let rx = self.tx.subscribe();
        (h.iter().cloned().collect(), rx)
    }
}

/// The `filters` of `/events`, as dockerd matches them.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub filters: BTreeMap<String, Vec<String>>,
}

impl EventFilter {
    pub fn new(filters: BTreeMap<String, Vec<String>>) -> Self {
        EventFilter { filters }
    }

    pub fn matches(&self, e: &Event) -> bool {
        self.filters.iter().all(|(key, values)| {
            values.is_empty()
                || values.iter().any(|v| match key.as_str() {
                    "type" => e.typ == *v,
                    "event" | "action" => e.action == *v || e.action.split(':').next() == Some(v.as_str()),
                    "image" => {
                        e.typ == "image" && (e.actor.id == *v || image_name_matches(&e.actor.id, v))
                            || e.actor.attributes.get("image").is_some_and(|i| i == v)
                            || e.actor.attributes.get("name").is_some_and(|n| e.typ == "image" && image_name_matches(n, v))
                    }
                    "container" => {
                        e.typ == "container"
                            && (e.actor.id.starts_with(v.as_str()) || e.actor.attributes.get("name") == Some(v))
                    }
                    "label" => match v.split_once('=') {
                        Some((k, val)) => e.actor.attributes.get(k).is_some_and(|x| x == val),
                        None => e.actor.attributes.contains_key(v.as_str()),
                    },
                    "scope" => e.scope == *v,
                    "network" | "volume" => e.typ == key.as_str() && (e.actor.id == *v || e.actor.attributes.get("name") == Some(v)),
                    _ => false,
                })
        })
    }
}

/// `busybox` matches `busybox:latest`; `sha256:abc` and `abc` match the ID.
fn image_name_matches(name: &str, wanted: &str) -> bool {
    name == wanted
        || name.strip_suffix(":latest") == Some(wanted)
        || name.strip_prefix("sha256:").is_some_and(|h| h.starts_with(wanted.trim_start_matches("sha256:")) && wanted.len() >= 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn subscriber_sees_history_then_live_events() {
        let bus = EventBus::new();
        bus.publish("image", "pull", "busybox:latest", attrs(&[("name", "busybox")]));
        let (past, mut rx) = bus.subscribe();
        bus.publish("image", "tag", "sha256:1", attrs(&[]));
        assert_eq!(past.len(), 1);
        assert_eq!(rx.try_recv().unwrap().action, "tag");
    }

    #[test]
    fn filter_by_type_action_and_label() {
        let bus = EventBus::new();
        bus.publish("image", "pull", "busybox:latest", attrs(&[("org.x", "1")]));
        let (past, _) = bus.subscribe();
        let e = &past[0];
        let f = |k: &str, v: &str| EventFilter::new(BTreeMap::from([(k.to_string(), vec![v.to_string()])])).matches(e);
        assert!(f("type", "image"));
        assert!(!f("type", "container"));
        assert!(f("event", "pull"));
        assert!(!f("event", "delete"));
        assert!(f("label", "org.x=1"));
        assert!(f("label", "org.x"));
        assert!(!f("label", "org.x=2"));
        assert!(f("image", "busybox"));
    }
}
