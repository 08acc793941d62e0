//! The deterministic part of the seeder: what the data set looks like.
//!
//! Everything comes from one `StdRng` seeded with `--seed`, drawn in a fixed order, and every
//! timestamp is relative to the anchor date (`--anchor`, default today): the same seed and
//! anchor give the same rows, ids included (ids are UUIDv7 built from each row's own
//! `created_at` and random bits from the same generator). `StdRng`'s stream is stable for a
//! given `rand` version, which `Cargo.lock` pins. One column differs between runs on
//! purpose: `users.password_hash`, hashed once per seed the way sign-up hashes, with a
//! random salt.
//!
//! The shape is the case study's, skewed the way real tenants are:
//! * project sizes: from 1 000 projects (200 000 tasks) on, three giant projects share 36 %
//!   of the tasks (14 %, 12 %, 10 %: at a million tasks, 140 000, 120 000 and 100 000), the
//!   rest follow a Zipf law — a long tail of small projects; smaller sets are Zipf throughout;
//! * assignees: 80 % of tasks are assigned, to their project's members with a Zipf skew
//!   (a few members carry most of the work); statuses 35 % todo, 15 % doing, 50 % done;
//! * due dates on 60 % of tasks, from 60 days before the anchor to 120 days after it;
//! * comments on a share of the tasks (`--comment-share`, 30 %), one to twenty each.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, RngExt as _, SeedableRng as _};
use uuid::Uuid;

use crate::domain::{Role, TaskStatus};

/// How many rows of each kind.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub users: u64,
    pub projects: u64,
    pub tasks: u64,
    /// The share of tasks that have comments (0–1).
    pub comment_share: f64,
}

impl Sizes {
    /// Users and projects in proportion to the tasks, unless given.
    pub fn for_tasks(
        tasks: u64,
        users: Option<u64>,
        projects: Option<u64>,
        comment_share: Option<f64>,
    ) -> Self {
        Self {
            users: users.unwrap_or((tasks / 50).max(10)),
            projects: projects.unwrap_or((tasks / 200).max(3)),
            tasks,
            comment_share: comment_share.unwrap_or(0.3),
        }
    }
}

pub struct UserSeed {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

pub struct ProjectSeed {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Indexes into the users; the first is the owner.
    pub members: Vec<(usize, Role)>,
    pub tasks: u64,
    /// The Zipf skew of assignees over `members`.
    assignees: WeightedIndex<f64>,
}

impl ProjectSeed {
    pub fn owner(&self) -> usize {
        self.members[0].0
    }
}

/// The users and projects, with each project's members and task count.
pub struct World {
    pub users: Vec<UserSeed>,
    pub projects: Vec<ProjectSeed>,
}

pub struct TaskSeed<'a> {
    pub id: Uuid,
    pub project_id: Uuid,
    pub title: String,
    pub description: Option<&'static str>,
    pub status: TaskStatus,
    pub assignee: Option<usize>,
    pub due_date: Option<NaiveDate>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub project: &'a ProjectSeed,
}

pub struct CommentSeed {
    pub id: Uuid,
    pub task_id: Uuid,
    pub author: usize,
    pub body: &'static str,
    pub created_at: DateTime<Utc>,
}

pub struct Generator {
    rng: StdRng,
    /// Midnight UTC of the anchor date: "now" for the data set.
    anchor: DateTime<Utc>,
    anchor_date: NaiveDate,
}

impl Generator {
    pub fn new(seed: u64, anchor: NaiveDate) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            anchor: anchor.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
            anchor_date: anchor,
        }
    }

    /// A UUIDv7 for a row created at `at`, its random bits from the seeded generator.
    fn uuid_at(&mut self, at: DateTime<Utc>) -> Uuid {
        let mut bits = [0u8; 10];
        self.rng.fill_bytes(&mut bits);
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or_default();
        uuid::Builder::from_unix_timestamp_millis(millis, &bits).into_uuid()
    }

    /// A moment between `from` and the anchor, at microsecond precision (what Postgres
    /// stores, so that the rows read back equal the rows generated).
    fn between(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) -> DateTime<Utc> {
        let span = (to - from).num_microseconds().unwrap_or(0).max(1);
        from + Duration::microseconds(self.rng.random_range(0..span))
    }

    fn days_before_anchor(&mut self, min: i64, max: i64) -> DateTime<Utc> {
        let from = self.anchor - Duration::days(max);
        let to = self.anchor - Duration::days(min);
        self.between(from, to)
    }

    /// The users and projects.
    pub fn world(&mut self, sizes: Sizes) -> World {
        let users: Vec<UserSeed> = (0..sizes.users)
            .map(|n| {
                let created_at = self.days_before_anchor(400, 500);
                let first = FIRST_NAMES.choose(&mut self.rng).copied().unwrap_or("Ada");
                let last = LAST_NAMES
                    .choose(&mut self.rng)
                    .copied()
                    .unwrap_or("Lovelace");
                UserSeed {
                    id: self.uuid_at(created_at),
                    email: format!("user{n:07}@seed.keel.dev"),
                    name: format!("{first} {last}"),
                    created_at,
                }
            })
            .collect();
        let counts = task_counts(sizes.projects, sizes.tasks);
        let user_count = users.len();
        let projects = counts
            .into_iter()
            .enumerate()
            .map(|(n, tasks)| {
                let created_at = self.days_before_anchor(30, 400);
                let member_count = if n < 3 && sizes.projects >= GIANTS_FROM {
                    60
                } else {
                    (2 + tasks / 50).min(25) as usize
                }
                .clamp(1, user_count);
                let picked = rand::seq::index::sample(&mut self.rng, user_count, member_count);
                let members: Vec<(usize, Role)> = picked
                    .into_iter()
                    .enumerate()
                    .map(|(i, user)| {
                        let role = match i {
                            0 => Role::Owner,
                            _ if i % 5 == 1 => Role::Admin,
                            _ => Role::Member,
                        };
                        (user, role)
                    })
                    .collect();
                let weights: Vec<f64> = (1..=members.len())
                    .map(|k| 1.0 / (k as f64).powf(1.1))
                    .collect();
                let adjective = ADJECTIVES.choose(&mut self.rng).copied().unwrap_or("Quiet");
                let noun = NOUNS.choose(&mut self.rng).copied().unwrap_or("launch");
                ProjectSeed {
                    id: self.uuid_at(created_at),
                    name: format!("{adjective} {noun} {n}"),
                    description: self
                        .rng
                        .random_bool(0.5)
                        .then(|| format!("The {noun} work of team {n}.")),
                    created_at,
                    members,
                    tasks,
                    assignees: WeightedIndex::new(weights).expect("positive weights"),
                }
            })
            .collect();
        World { users, projects }
    }

    /// Generates every task (and its comments) of every project, in order.
    pub fn tasks(
        &mut self,
        world: &World,
        comment_share: f64,
        mut task: impl FnMut(&TaskSeed<'_>),
        mut comment: impl FnMut(&CommentSeed),
    ) {
        for project in &world.projects {
            for n in 0..project.tasks {
                let created_at = self.between(project.created_at, self.anchor);
                let updated_at = self.between(created_at, self.anchor);
                let roll: f64 = self.rng.random();
                let status = if roll < 0.35 {
                    TaskStatus::Todo
                } else if roll < 0.50 {
                    TaskStatus::Doing
                } else {
                    TaskStatus::Done
                };
                let assignee = self
                    .rng
                    .random_bool(0.8)
                    .then(|| project.members[self.rng.sample(&project.assignees)].0);
                let due_date = self
                    .rng
                    .random_bool(0.6)
                    .then(|| self.anchor_date + Duration::days(self.rng.random_range(-60..=120)));
                let verb = VERBS.choose(&mut self.rng).copied().unwrap_or("Fix");
                let object = OBJECTS
                    .choose(&mut self.rng)
                    .copied()
                    .unwrap_or("the build");
                let seed = TaskSeed {
                    id: self.uuid_at(created_at),
                    project_id: project.id,
                    title: format!("{verb} {object} #{}", n + 1),
                    description: self.rng.random_bool(0.5).then(|| {
                        DESCRIPTIONS
                            .choose(&mut self.rng)
                            .copied()
                            .unwrap_or_default()
                    }),
                    status,
                    assignee,
                    due_date,
                    created_at,
                    updated_at,
                    project,
                };
                task(&seed);
                if self.rng.random_bool(comment_share) {
                    // One to twenty, most tasks few: 1 + a geometric tail.
                    let mut count = 1;
                    while count < 20 && self.rng.random_bool(0.6) {
                        count += 1;
                    }
                    for _ in 0..count {
                        let at = self.between(created_at, self.anchor);
                        let author = project
                            .members
                            .choose(&mut self.rng)
                            .map_or(project.owner(), |m| m.0);
                        let body = COMMENTS
                            .choose(&mut self.rng)
                            .copied()
                            .unwrap_or("Looks good.");
                        comment(&CommentSeed {
                            id: self.uuid_at(at),
                            task_id: seed.id,
                            author,
                            body,
                            created_at: at,
                        });
                    }
                }
            }
        }
    }
}

/// From how many projects on three of them are giants.
const GIANTS_FROM: u64 = 1000;

/// Each project's number of tasks: three giants (14 %, 12 %, 10 %) when there are at least
/// `GIANTS_FROM` projects, a Zipf law over the rest, rounded by largest remainder so that the counts
/// add up to exactly `tasks`.
pub fn task_counts(projects: u64, tasks: u64) -> Vec<u64> {
    // With fewer projects the Zipf head of the tail would outgrow the "giants"; a plain
    // Zipf law is skewed enough there.
    let giant_shares: &[f64] = if projects >= GIANTS_FROM {
        &[0.14, 0.12, 0.10]
    } else {
        &[]
    };
    let projects = projects.max(1) as usize;
    let mut counts: Vec<u64> = giant_shares
        .iter()
        .map(|s| (tasks as f64 * s) as u64)
        .collect();
    let rest = tasks - counts.iter().sum::<u64>();
    let tail = projects - counts.len();
    let weights: Vec<f64> = (1..=tail).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| rest as f64 * w / total).collect();
    let mut tail_counts: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let mut missing = rest - tail_counts.iter().sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..tail).collect();
    by_remainder
        .sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for i in by_remainder {
        if missing == 0 {
            break;
        }
        tail_counts[i] += 1;
        missing -= 1;
    }
    counts.extend(tail_counts);
    counts
}

const FIRST_NAMES: &[&str] = &[
    "Ada",
    "Alan",
    "Barbara",
    "Brian",
    "Claude",
    "Dennis",
    "Donald",
    "Edsger",
    "Frances",
    "Grace",
    "Hedy",
    "Ivan",
    "Jean",
    "John",
    "Ken",
    "Leslie",
    "Linus",
    "Margaret",
    "Niklaus",
    "Radia",
    "Rob",
    "Shafi",
    "Sophie",
    "Tim",
    "Vint",
    "Whitfield",
    "Yukihiro",
    "Zhang",
];
const LAST_NAMES: &[&str] = &[
    "Lovelace",
    "Turing",
    "Liskov",
    "Kernighan",
    "Shannon",
    "Ritchie",
    "Knuth",
    "Dijkstra",
    "Allen",
    "Hopper",
    "Lamarr",
    "Sutherland",
    "Sammet",
    "Backus",
    "Thompson",
    "Lamport",
    "Torvalds",
    "Hamilton",
    "Wirth",
    "Perlman",
    "Pike",
    "Goldwasser",
    "Wilson",
    "Berners-Lee",
    "Cerf",
    "Diffie",
    "Matsumoto",
    "Wei",
];
const ADJECTIVES: &[&str] = &[
    "Apollo",
    "Blue",
    "Copper",
    "Delta",
    "Evergreen",
    "Falcon",
    "Granite",
    "Harbor",
    "Indigo",
    "Juniper",
    "Kestrel",
    "Lumen",
    "Meridian",
    "Nimbus",
    "Orion",
    "Polar",
];
const NOUNS: &[&str] = &[
    "relaunch",
    "migration",
    "onboarding",
    "billing",
    "search",
    "mobile app",
    "analytics",
    "platform",
    "checkout",
    "reporting",
    "integrations",
    "security review",
];
const VERBS: &[&str] = &[
    "Fix",
    "Add",
    "Update",
    "Remove",
    "Refactor",
    "Document",
    "Test",
    "Investigate",
    "Design",
    "Review",
    "Migrate",
    "Speed up",
];
const OBJECTS: &[&str] = &[
    "the login timeout",
    "the billing page",
    "the search index",
    "the onboarding email",
    "API rate limits",
    "the dashboard",
    "the mobile layout",
    "CSV export",
    "password reset",
    "the audit log",
    "webhook retries",
    "dark mode",
    "the invoice PDF",
    "SSO with Okta",
    "slow project queries",
    "the signup form",
];
const DESCRIPTIONS: &[&str] = &[
    "Customers report this during peak hours.",
    "Blocked on the design review; see the linked doc.",
    "Reproduced on staging with the large tenant's data.",
    "Small change, but it touches the billing path: pair on it.",
    "Follow-up from the incident review.",
    "Needs a migration; coordinate the rollout with support.",
];
const COMMENTS: &[&str] = &[
    "Reproduced on staging.",
    "I can take this one.",
    "Blocked until the API change ships.",
    "Fixed in the latest build, please verify.",
    "This is slow again for the big tenant.",
    "Moved to next sprint.",
    "Added a test that covers it.",
    "Looks good to me.",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_counts_add_up_exactly_and_are_skewed() {
        for (projects, tasks) in [
            (5000, 1_000_000),
            (3, 10),
            (1, 7),
            (1000, 100_003),
            (250, 12_345),
        ] {
            let counts = task_counts(projects, tasks);
            assert_eq!(counts.len(), projects as usize);
            assert_eq!(
                counts.iter().sum::<u64>(),
                tasks,
                "{projects} projects, {tasks} tasks"
            );
        }
        let counts = task_counts(5000, 1_000_000);
        assert_eq!(&counts[..3], &[140_000, 120_000, 100_000]);
        assert!(counts[3] < counts[2], "the giants are the largest");
        assert!(counts[3] > counts[100] && counts[100] >= counts[4999]);
        let counts = task_counts(1000, 200_000);
        assert!(
            counts[3] < counts[2],
            "the giants are the largest at 1 000 projects too"
        );
    }

    #[test]
    fn the_same_seed_generates_the_same_rows() {
        let anchor = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
        let run = |seed| {
            let mut generator = Generator::new(seed, anchor);
            let world = generator.world(Sizes::for_tasks(500, None, None, None));
            let (mut tasks, mut comments) = (Vec::new(), Vec::new());
            generator.tasks(&world, 0.3, |t| tasks.push(t.id), |c| comments.push(c.id));
            (tasks, comments)
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn generated_times_stay_before_the_anchor() {
        let anchor = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
        let mut generator = Generator::new(1, anchor);
        let world = generator.world(Sizes::for_tasks(300, None, None, None));
        let midnight = anchor.and_hms_opt(0, 0, 0).unwrap().and_utc();
        generator.tasks(
            &world,
            0.5,
            |t| {
                assert!(
                    t.project.created_at <= t.created_at
                        && t.created_at <= t.updated_at
                        && t.updated_at <= midnight
                )
            },
            |c| assert!(c.created_at <= midnight),
        );
    }
}
