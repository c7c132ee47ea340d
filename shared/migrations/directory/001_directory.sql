-- The member directory as a service sees it: each member's newest state by the directory's
-- per-member sequence (`shared.directory`).
CREATE TABLE directory_members (
    organisation_id text        NOT NULL,
    member_id       text        NOT NULL,
    role            text        NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    status          text        NOT NULL CHECK (status IN ('active', 'deactivated', 'removed')),
    sequence        bigint      NOT NULL CHECK (sequence >= 0),
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (organisation_id, member_id)
);
