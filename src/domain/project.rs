//! Projects: name and description.

use super::text::{Lines, bounded_text};

bounded_text!(
    /// A project's name: 1-200 characters on one line.
    ProjectName, 1, 200, Lines::Single
);

bounded_text!(
    /// A project's description: up to 10 000 characters, several lines allowed.
    ProjectDescription, 0, 10_000, Lines::Multi
);
