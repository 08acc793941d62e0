//! Tasks and comments: title, description, status, comment body.

use std::fmt;
use std::str::FromStr;

use super::text::{Lines, bounded_text};

bounded_text!(
    /// A task's title: 1-200 characters on one line.
    TaskTitle, 1, 200, Lines::Single
);

bounded_text!(
    /// A task's description: up to 10 000 characters, several lines allowed.
    TaskDescription, 0, 10_000, Lines::Multi
);

bounded_text!(
    /// A comment: 1-10 000 characters, several lines allowed.
    CommentBody, 1, 10_000, Lines::Multi
);

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Todo,
    Doing,
    Done,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 3] = [Self::Todo, Self::Doing, Self::Done];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Todo => "todo",
            Self::Doing => "doing",
            Self::Done => "done",
        }
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| "must be one of todo, doing, done".into())
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_its_name() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
        }
        assert!("Done".parse::<TaskStatus>().is_err());
    }
}
