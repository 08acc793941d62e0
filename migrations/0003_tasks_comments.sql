-- Tasks and comments (served by the tasks issue; the schema is laid now).
create table tasks (
    id          uuid        primary key,
    project_id  uuid        not null references projects (id) on delete cascade,
    title       text        not null check (char_length(title) between 1 and 200),
    description text        check (char_length(description) <= 10000),
    status      text        not null default 'todo' check (status in ('todo', 'doing', 'done')),
    assignee_id uuid,
    due_date    date,
    created_at  timestamptz not null,
    updated_at  timestamptz not null,
    -- The assignee must be a member of the task's project: the database, not only the
    -- handler, refuses anyone else. Removing the member unassigns their tasks in that
    -- project (PostgreSQL 15+: SET NULL on a column list).
    constraint tasks_assignee_member_fkey
        foreign key (project_id, assignee_id)
        references project_members (project_id, user_id)
        on delete set null (assignee_id)
);

-- Serves: `GET /v1/projects/{id}/tasks` with no filter, newest first, keyset-paginated:
--   where project_id = $1 and (created_at, id) < ($2, $3) order by created_at desc, id desc
create index tasks_project_created_idx
    on tasks (project_id, created_at desc, id desc);

-- Serves: `GET /v1/projects/{id}/tasks?status=` (and the per-project stats by status).
create index tasks_project_status_created_idx
    on tasks (project_id, status, created_at desc, id desc);

-- Serves: `GET /v1/projects/{id}/tasks?assignee_id=`, and the foreign key to
-- project_members (a member's removal finds their tasks in that project through it).
create index tasks_project_assignee_created_idx
    on tasks (project_id, assignee_id, created_at desc, id desc);

-- Serves: `GET /v1/projects/{id}/tasks?assignee_id=&status=`. A separate index rather
-- than a filter inside the assignee's range: with a skewed assignee (thousands of done
-- tasks) a filter would read far more rows than the page it returns.
create index tasks_project_assignee_status_created_idx
    on tasks (project_id, assignee_id, status, created_at desc, id desc);

-- Serves: `GET /v1/me/tasks` (tasks assigned to the caller across projects).
create index tasks_assignee_created_idx
    on tasks (assignee_id, created_at desc, id desc)
    where assignee_id is not null;

-- Serves: `GET /v1/me/tasks?status=`.
create index tasks_assignee_status_created_idx
    on tasks (assignee_id, status, created_at desc, id desc)
    where assignee_id is not null;

create table comments (
    id         uuid        primary key,
    task_id    uuid        not null references tasks (id) on delete cascade,
    author_id  uuid        not null references users (id) on delete cascade,
    body       text        not null check (char_length(body) between 1 and 10000),
    created_at timestamptz not null
);

-- Serves: `GET /v1/tasks/{id}/comments` (oldest first, keyset-paginated):
--   where task_id = $1 and (created_at, id) > ($2, $3) order by created_at, id
-- and the comment counts of a page of tasks (`where task_id = any($1)`, index-only).
create index comments_task_created_idx on comments (task_id, created_at, id);

-- Serves: the foreign key comments.author_id (a user's comments).
create index comments_author_idx on comments (author_id);
