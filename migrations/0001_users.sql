-- Users: the accounts behind `POST /v1/users` and `POST /v1/auth/token`.
create table users (
    id            uuid        primary key,
    email         text        not null check (char_length(email) between 3 and 254),
    name          text        not null check (char_length(name) between 1 and 100),
    -- argon2id PHC string; never leaves the data layer.
    password_hash text        not null,
    created_at    timestamptz not null default now()
);

-- Serves: sign-up's "email taken" check (409, case-insensitive), the login lookup
-- (`POST /v1/auth/token`) and adding a member by email (`POST /v1/projects/{id}/members`):
--   ... where lower(email) = lower($1)
-- Unique on lower(email) so that `A@x.io` and `a@x.io` are one account.
create unique index users_email_key on users (lower(email));
