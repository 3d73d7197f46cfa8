//! Origins: the node incarnations that contribute to a node's tables. Entries refer to an
//! origin by a small index ([`OriginId`]) into this registry, never by name, which keeps an
//! entry compact; the registry also holds each origin's liveness for gauge merging.

use std::cmp::Ordering as CmpOrdering;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::clock::Tick;

/// Index of an origin in a node's [`Origins`].
pub type OriginId = u16;

/// The local node's origin is always index 0.
pub const LOCAL: OriginId = 0;

/// How many origins (node incarnations) a node tracks at once.
pub const MAX_ORIGINS: usize = 4096;

/// A node incarnation: a node that restarts is a new origin, so it can count from zero while the
/// contributions of its previous life age out.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginName {
    /// The node name (`node.name`).
    pub node: String,
    /// Chosen at start-up, larger for a later start of the same node.
    pub incarnation: u64,
}

impl fmt::Display for OriginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node, self.incarnation)
    }
}

/// The registry has no room for another origin.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("too many origins (at most {MAX_ORIGINS} node incarnations)")]
pub struct OriginsFull;

/// The origins a node knows, with their liveness.
#[derive(Debug)]
pub struct Origins {
    names: RwLock<Vec<OriginName>>,
    index: RwLock<HashMap<OriginName, OriginId>>,
    /// Per origin: 0 = never heard (or declared dead), else `1 << 32 | tick` of the last message.
    heard: Box<[AtomicU64]>,
    dead_after_ms: AtomicU32,
}

impl Origins {
    /// A registry whose local origin is `local`; remote origins are dead `dead_after_ms` after
    /// they were last heard.
    pub fn new(local: OriginName, dead_after_ms: u32) -> Origins {
        let heard = (0..MAX_ORIGINS).map(|_| AtomicU64::new(0)).collect();
        let mut index = HashMap::new();
        index.insert(local.clone(), LOCAL);
        Origins {
            names: RwLock::new(vec![local]),
            index: RwLock::new(index),
            heard,
            dead_after_ms: AtomicU32::new(dead_after_ms),
        }
    }

    /// The local origin's name.
    pub fn local(&self) -> OriginName {
        self.names.read()[usize::from(LOCAL)].clone()
    }

    /// The id of an origin, registering it if new.
    pub fn intern(&self, name: &OriginName) -> Result<OriginId, OriginsFull> {
        if let Some(&id) = self.index.read().get(name) {
            return Ok(id);
        }
        let mut index = self.index.write();
        if let Some(&id) = index.get(name) {
            return Ok(id);
        }
        let mut names = self.names.write();
        if names.len() >= MAX_ORIGINS {
            return Err(OriginsFull);
        }
        // names.len() < MAX_ORIGINS <= u16::MAX.
        let id = names.len() as OriginId;
        names.push(name.clone());
        index.insert(name.clone(), id);
        Ok(id)
    }

    /// The id of a known origin.
    pub fn lookup(&self, name: &OriginName) -> Option<OriginId> {
        self.index.read().get(name).copied()
    }

    /// Every incarnation of a node known here.
    pub fn ids_of_node(&self, node: &str) -> Vec<OriginId> {
        self.index
            .read()
            .iter()
            .filter(|(n, _)| n.node == node)
            .map(|(_, &id)| id)
            .collect()
    }

    /// The name of an origin.
    pub fn name(&self, id: OriginId) -> Option<OriginName> {
        self.names.read().get(usize::from(id)).cloned()
    }

    /// Orders two origins by node name, then incarnation: the tie-break of register writes
    /// with equal stamps.
    pub fn cmp_names(&self, a: OriginId, b: OriginId) -> CmpOrdering {
        if a == b {
            return CmpOrdering::Equal;
        }
        let names = self.names.read();
        names.get(usize::from(a)).cmp(&names.get(usize::from(b)))
    }

    /// Records that a message from `id` arrived at `now`.
    pub fn heard(&self, id: OriginId, now: Tick) {
        if let Some(h) = self.heard.get(usize::from(id)) {
            h.store(1 << 32 | u64::from(now.0), Ordering::Relaxed);
        }
    }

    /// Declares an origin dead at once (its peer was removed or its session ended for good).
    pub fn forget(&self, id: OriginId) {
        if let Some(h) = self.heard.get(usize::from(id)) {
            h.store(0, Ordering::Relaxed);
        }
    }

    /// Changes how long a silent origin stays live.
    pub fn set_dead_after(&self, ms: u32) {
        self.dead_after_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether an origin's gauges count at `now`: the local origin always, a remote one if it
    /// was heard within `dead_after`.
    pub fn is_live(&self, id: OriginId, now: Tick) -> bool {
        if id == LOCAL {
            return true;
        }
        let Some(h) = self.heard.get(usize::from(id)) else {
            return false;
        };
        let h = h.load(Ordering::Relaxed);
        h != 0 && now.since(Tick(h as u32)) <= self.dead_after_ms.load(Ordering::Relaxed)
    }

    /// Number of origins registered, the local one included.
    pub fn len(&self) -> usize {
        self.names.read().len()
    }

    /// Never true: the local origin is always registered.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(node: &str, incarnation: u64) -> OriginName {
        OriginName {
            node: node.into(),
            incarnation,
        }
    }

    #[test]
    fn interning_is_stable_and_local_is_zero() {
        let o = Origins::new(name("a", 1), 5000);
        assert_eq!(o.lookup(&name("a", 1)), Some(LOCAL));
        let b = o.intern(&name("b", 1)).unwrap();
        assert_eq!(o.intern(&name("b", 1)).unwrap(), b);
        let b2 = o.intern(&name("b", 2)).unwrap();
        assert_ne!(b, b2, "a restarted node is a new origin");
        assert_eq!(o.name(b2), Some(name("b", 2)));
        assert_eq!(o.cmp_names(b, b2), CmpOrdering::Less);
        assert_eq!(o.cmp_names(LOCAL, b), CmpOrdering::Less);
    }

    #[test]
    fn liveness_follows_dead_after() {
        let o = Origins::new(name("a", 1), 5000);
        let b = o.intern(&name("b", 1)).unwrap();
        assert!(o.is_live(LOCAL, Tick(0)));
        assert!(!o.is_live(b, Tick(0)), "never heard is dead");
        o.heard(b, Tick(1000));
        assert!(o.is_live(b, Tick(6000)));
        assert!(!o.is_live(b, Tick(6001)));
        o.heard(b, Tick(7000));
        assert!(o.is_live(b, Tick(7000)));
        o.forget(b);
        assert!(!o.is_live(b, Tick(7000)));
    }

    #[test]
    fn registry_is_bounded() {
        let o = Origins::new(name("a", 1), 5000);
        for i in 1..MAX_ORIGINS {
            o.intern(&name("n", i as u64)).unwrap();
        }
        assert_eq!(o.intern(&name("n", 999_999)), Err(OriginsFull));
    }
}
