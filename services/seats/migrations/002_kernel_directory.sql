-- The member directory's projection is the kernel's (`shared.directory`): its table replaces
-- this service's own copy, rows included.
INSERT INTO directory_members (organisation_id, member_id, role, status, sequence, updated_at)
SELECT organisation_id, member_id, role, status, sequence, updated_at FROM members
ON CONFLICT (organisation_id, member_id) DO NOTHING;
DROP TABLE members;
