//! Project roles and what each may do.

use std::fmt;
use std::str::FromStr;

/// A member's role in a project, ordered by power: `Member < Admin < Owner`.
///
/// The ordering is the whole authorization model of the contract: an operation names
/// the least role it needs, and `role >= needed` decides. The extra rules that are not a
/// plain threshold (an admin cannot remove an owner; anyone may remove themself; the last
/// owner cannot leave) are methods here, so that they are unit-tested next to the ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    /// Whether a member with this role may remove a member holding `target`
    /// (someone other than themself).
    pub fn may_remove_other(self, target: Role) -> bool {
        match self {
            Self::Owner => true,
            Self::Admin => target != Self::Owner,
            Self::Member => false,
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "member" => Ok(Self::Member),
            "admin" => Ok(Self::Admin),
            "owner" => Ok(Self::Owner),
            _ => Err("must be one of owner, admin, member".into()),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Member < Role::Admin && Role::Admin < Role::Owner);
    }

    #[test]
    fn an_admin_cannot_remove_an_owner() {
        assert!(!Role::Admin.may_remove_other(Role::Owner));
        assert!(Role::Admin.may_remove_other(Role::Admin));
        assert!(Role::Owner.may_remove_other(Role::Owner));
        assert!(!Role::Member.may_remove_other(Role::Member));
    }
}
