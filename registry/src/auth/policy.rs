//! Who may do what: the platform's rules, in one place. Admins may do
//! everything; a namespace account may pull, push and delete in its own
//! namespace and pull from public ones; anonymous callers may pull from
//! public namespaces when anonymous pull is on.

use super::{Action, Principal};
use std::collections::HashSet;

#[derive(Debug, Clone)]
pub struct Policy {
    pub anonymous_pull: bool,
    /// Namespaces only their own account (and admins) may pull from.
    pub private_namespaces: HashSet<String>,
}

impl Policy {
    pub fn is_public(&self, namespace: &str) -> bool {
        !self.private_namespaces.contains(namespace)
    }

    pub fn allows(&self, who: &Principal, namespace: &str, action: Action) -> bool {
        match who {
            Principal::Unrestricted | Principal::Admin => true,
            Principal::Namespace(own) => {
                own == namespace || (action == Action::Pull && self.is_public(namespace))
            }
            Principal::Anonymous => {
                action == Action::Pull && self.anonymous_pull && self.is_public(namespace)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let p = Policy {
            anonymous_pull: true,
            private_namespaces: ["tool-secret".to_owned()].into(),
        };
        let a = Principal::Namespace("tool-a".into());
        assert!(p.allows(&a, "tool-a", Action::Push));
        assert!(p.allows(&a, "tool-a", Action::Delete));
        assert!(p.allows(&a, "tool-b", Action::Pull));
        assert!(!p.allows(&a, "tool-b", Action::Push));
        assert!(!p.allows(&a, "tool-secret", Action::Pull));
        assert!(p.allows(&Principal::Anonymous, "tool-b", Action::Pull));
        assert!(!p.allows(&Principal::Anonymous, "tool-b", Action::Push));
        assert!(!p.allows(&Principal::Anonymous, "tool-secret", Action::Pull));
        assert!(p.allows(&Principal::Admin, "tool-secret", Action::Delete));
        let closed = Policy {
            anonymous_pull: false,
            ..p
        };
        assert!(!closed.allows(&Principal::Anonymous, "tool-b", Action::Pull));
    }
}
