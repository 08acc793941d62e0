-- Projects and their members. Deleting a project takes its members (and, through
-- 0003, its tasks and comments) with it: the contract's cascade.
create table projects (
    id          uuid        primary key,
    name        text        not null check (char_length(name) between 1 and 200),
    description text        check (char_length(description) <= 10000),
    owner_id    uuid        not null references users (id),
    created_at  timestamptz not null,
    updated_at  timestamptz not null
);

create table project_members (
    project_id         uuid        not null references projects (id) on delete cascade,
    user_id            uuid        not null references users (id) on delete cascade,
    role               text        not null check (role in ('owner', 'admin', 'member')),
    added_at           timestamptz not null default now(),
    -- A copy of projects.created_at (immutable), so that "the caller's projects, newest
    -- first" is one ordered index range scan instead of a join followed by a sort over
    -- every project the user belongs to.
    project_created_at timestamptz not null,
    -- Serves: every authorization check (`ProjectAccess`: the caller's role in a project),
    -- and `GET /v1/projects/{id}/members` (all members of one project).
    primary key (project_id, user_id)
);

-- Serves: `GET /v1/projects` (the caller's projects, newest first, keyset-paginated):
--   where user_id = $1 and (project_created_at, project_id) < ($2, $3)
--   order by project_created_at desc, project_id desc limit $4
create index project_members_user_idx
    on project_members (user_id, project_created_at desc, project_id desc);

-- Serves: the "last owner" check when a member is removed:
--   where project_id = $1 and role = 'owner'
-- (partial: owners are few, so the index stays tiny).
create index project_members_owners_idx
    on project_members (project_id) where role = 'owner';

-- Serves: the foreign key projects.owner_id (a user's owned projects), so that a
-- cascading or restricting delete of a user does not scan projects.
create index projects_owner_idx on projects (owner_id);
