-- Enqueue one job from a botrix client: write its record, then queue or schedule its id.
--
-- KEYS[1] pending list     KEYS[2] scheduled zset     KEYS[3] the job's record hash
-- KEYS[4] events channel   KEYS[5] dead zset
-- ARGV[1] job id           ARGV[2] envelope (JSON)    ARGV[3] delay in ms (0 = now)
-- ARGV[4] queue name      ARGV[5] 1: once (nothing while any record has this id), else 0
-- Returns 1 when enqueued, 0 when a job with this id already exists (idempotent enqueue).
--- @include "_event.lua"
--- @include "_enqueue.lua"

expect_types({[KEYS[1]] = 'list', [KEYS[2]] = 'zset', [KEYS[5]] = 'zset'})
local k = {pending = KEYS[1], scheduled = KEYS[2], record = KEYS[3], events = KEYS[4], dead = KEYS[5]}
return enqueue_job(k, ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5] == '1')
