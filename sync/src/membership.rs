//! Fleet membership as a replicated set: per member name, the latest change (add with an
//! address, or removal) wins by hybrid logical clock stamp. Removals stay as tombstones so an
//! older add arriving late cannot resurrect a removed peer. Pure state; the replication layer
//! persists it and carries it between peers.

use std::collections::BTreeMap;

use crate::clock::Stamp;

/// One member, as the latest change left it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// `host:port` of its replication listener.
    pub addr: String,
    /// A tombstone: the member was removed.
    pub removed: bool,
    /// Stamp of the change (0: seeded from a config file, older than any runtime change).
    pub stamp: Stamp,
}

impl Member {
    /// Whether `self` supersedes `other` (same name): the later stamp, then a removal, then the
    /// larger address, so every node picks the same winner whatever the order it hears them.
    fn beats(&self, other: &Member) -> bool {
        (self.stamp, self.removed, &self.addr) > (other.stamp, other.removed, &other.addr)
    }
}

/// A membership change that cannot be made.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipError {
    /// A node cannot add or remove itself.
    #[error("`{0}` is this node")]
    IsSelf(String),
    /// Removing a name that is not a member.
    #[error("`{0}` is not a member")]
    Unknown(String),
    /// A name that is not a DNS label.
    #[error("bad node name `{0}` (lowercase letters, digits and `-`, at most 63)")]
    BadName(String),
    /// An address that is not `host:port`.
    #[error("bad address `{0}` (expected host:port)")]
    BadAddr(String),
}

/// The fleet as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    me: String,
    members: BTreeMap<String, Member>,
}

impl Membership {
    /// A membership holding only `me`.
    pub fn new(me: impl Into<String>) -> Membership {
        Membership {
            me: me.into(),
            members: BTreeMap::new(),
        }
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Merges changes heard from a peer (or loaded from disk); returns whether anything changed.
    pub fn merge<'a>(&mut self, changes: impl IntoIterator<Item = &'a Member>) -> bool {
        let mut changed = false;
        for m in changes {
            if check_name(&m.name).is_err() {
                continue;
            }
            match self.members.get(&m.name) {
                Some(cur) if !m.beats(cur) => {}
                _ => {
                    self.members.insert(m.name.clone(), m.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    /// Adds (or re-adds, or moves) a peer.
    pub fn add(&mut self, name: &str, addr: &str, stamp: Stamp) -> Result<Member, MembershipError> {
        check_name(name)?;
        check_addr(addr)?;
        if name == self.me {
            return Err(MembershipError::IsSelf(name.into()));
        }
        let m = Member {
            name: name.into(),
            addr: addr.into(),
            removed: false,
            stamp,
        };
        self.merge([&m]);
        Ok(m)
    }

    /// Removes a peer (a tombstone).
    pub fn remove(&mut self, name: &str, stamp: Stamp) -> Result<Member, MembershipError> {
        if name == self.me {
            return Err(MembershipError::IsSelf(name.into()));
        }
        let cur = self
            .members
            .get(name)
            .filter(|m| !m.removed)
            .ok_or_else(|| MembershipError::Unknown(name.into()))?;
        let m = Member {
            name: name.into(),
            addr: cur.addr.clone(),
            removed: true,
            stamp,
        };
        self.merge([&m]);
        Ok(m)
    }

    /// Every member, tombstones included (what is persisted and sent to peers).
    pub fn all(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The peers: members that are not removed and not this node.
    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.members
            .values()
            .filter(|m| !m.removed && m.name != self.me)
    }

    /// Whether `name` is a current peer.
    pub fn is_peer(&self, name: &str) -> bool {
        self.peers().any(|m| m.name == name)
    }

    /// Whether this node itself has been removed from the fleet.
    pub fn self_removed(&self) -> bool {
        self.members.get(&self.me).is_some_and(|m| m.removed)
    }
}

/// Node names are DNS labels: they are TLS server names.
pub fn check_name(name: &str) -> Result<(), MembershipError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(MembershipError::BadName(name.into()))
    }
}

fn check_addr(addr: &str) -> Result<(), MembershipError> {
    let bad = || MembershipError::BadAddr(addr.into());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, addr: &str, removed: bool, stamp: Stamp) -> Member {
        Member {
            name: name.into(),
            addr: addr.into(),
            removed,
            stamp,
        }
    }

    #[test]
    fn latest_change_wins_in_any_order() {
        let changes = [
            m("b", "b:1", false, 1),
            m("b", "b:2", false, 5),
            m("b", "b:2", true, 7),
            m("c", "c:1", false, 2),
        ];
        let mut one = Membership::new("a");
        one.merge(changes.iter());
        let mut two = Membership::new("a");
        two.merge(changes.iter().rev());
        assert_eq!(one, two);
        assert!(!one.is_peer("b"), "the removal is newest");
        assert!(one.is_peer("c"));
        assert!(!one.merge(changes.iter()), "merging again changes nothing");
        // A late, older add does not resurrect a removed member; a newer one does.
        assert!(!one.merge([&m("b", "b:9", false, 6)]));
        assert!(one.merge([&m("b", "b:9", false, 8)]));
        assert!(one.is_peer("b"));
    }

    #[test]
    fn add_and_remove_validate() {
        let mut ms = Membership::new("edge-1");
        assert_eq!(
            ms.add("edge-1", "x:1", 1),
            Err(MembershipError::IsSelf("edge-1".into()))
        );
        assert!(matches!(
            ms.add("Edge_2", "x:1", 1),
            Err(MembershipError::BadName(_))
        ));
        assert!(matches!(
            ms.add("edge-2", "nohost", 1),
            Err(MembershipError::BadAddr(_))
        ));
        assert!(matches!(
            ms.add("edge-2", "h:0", 1),
            Err(MembershipError::BadAddr(_))
        ));
        ms.add("edge-2", "10.0.0.2:7000", 1).unwrap();
        assert_eq!(ms.peers().count(), 1);
        assert_eq!(
            ms.remove("edge-9", 2),
            Err(MembershipError::Unknown("edge-9".into()))
        );
        ms.remove("edge-2", 2).unwrap();
        assert_eq!(ms.peers().count(), 0);
        assert_eq!(ms.all().count(), 1, "the tombstone stays");
        assert!(!ms.self_removed());
        ms.merge([&m("edge-1", "x:1", true, 3)]);
        assert!(ms.self_removed());
    }
}
