//! The Lua scripts of the Redis [`Store`](crate::Store) and of the task
//! queues (`cluster::tasks`; see the
//! `cluster::store` module docs for the key layout they work on). Each starts
//! with a `#!lua` shebang, so Redis refuses it *before it runs* when it is
//! over `maxmemory`; each makes every check that could fail before its first
//! write.

/// Appends one version. KEYS: latest pointer, versions hash, the tenant's
/// function set. ARGV: function name, record JSON. Returns the new number.
pub const APPEND_SCRIPT: &str = r#"#!lua
local latest = redis.call('GET', KEYS[1])
local n = 1
if latest then
  n = tonumber(latest)
  if not n or n < 0 or n % 1 ~= 0 then
    return redis.error_reply('TMCORRUPT latest version pointer ' .. KEYS[1] .. ' holds ' .. latest)
  end
  n = n + 1
end
if redis.call('HEXISTS', KEYS[2], n) == 1 then
  return redis.error_reply('TMCORRUPT version ' .. n .. ' already exists in ' .. KEYS[2])
end
local index_type = redis.call('TYPE', KEYS[3])['ok']
if index_type ~= 'none' and index_type ~= 'set' then
  return redis.error_reply('TMCORRUPT ' .. KEYS[3] .. ' is a ' .. index_type .. ', not a set')
end
redis.call('HSET', KEYS[2], n, ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SET', KEYS[1], n)
return n
"#;

/// Adds `ARGV[i]` to counter `KEYS[i]` for every i, or to none of them.
pub const ADD_COUNTERS_SCRIPT: &str = r#"#!lua
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value then
    if not string.match(value, '^%-?%d+$') then
      return redis.error_reply('TMCORRUPT counter ' .. key .. ' holds ' .. value)
    end
    if tonumber(value) + tonumber(ARGV[i]) > 9.0e18 then
      return redis.error_reply('TMCORRUPT counter ' .. key .. ' would overflow')
    end
  end
end
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, ARGV[i])
end
return #KEYS
"#;

/// Creates a rollout unless its alias already has an active one. KEYS: the
/// active-rollouts hash, the function's rollouts hash. ARGV: the alias's field
/// in the active hash, the rollout id, the record JSON. Returns the id of the
/// existing active rollout, or `''` when this one was stored.
pub const CREATE_ROLLOUT_SCRIPT: &str = r#"#!lua
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then
  return existing
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ''
"#;

/// Replaces a rollout if its stored `revision` is `ARGV[3]`. KEYS: as
/// [`CREATE_ROLLOUT_SCRIPT`]. ARGV: the alias's field, the rollout id, the
/// expected revision, the new JSON, `1` while the rollout stays active (else
/// `0`, which frees the alias). Returns 1 when written, 0 when another write
/// came first.
pub const UPDATE_ROLLOUT_SCRIPT: &str = r#"#!lua
local current = redis.call('HGET', KEYS[2], ARGV[2])
if not current then
  return 0
end
local ok, decoded = pcall(cjson.decode, current)
if not ok or type(decoded) ~= 'table' then
  return redis.error_reply('TMCORRUPT rollout ' .. ARGV[2] .. ' in ' .. KEYS[2] .. ' is not JSON')
end
if decoded['revision'] ~= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
if ARGV[5] == '0' and redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"#;

/// Takes or renews a lease. KEYS: the lease key. ARGV: the holder, the TTL in
/// ms. Returns 1 when `ARGV[1]` holds the lease now, 0 while another does.
pub const LEASE_SCRIPT: &str = r#"#!lua
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

// --- Tasks (`cluster::tasks`) ----------------------------------------------

/// Stores and queues a task with its idempotency key (see `cluster::tasks`).
/// The task's current stream entry is kept in its hash (`entry`): any other
/// entry that names it is stale and is dropped when read.
pub const TASK_SUBMIT: &str = r#"#!lua
if ARGV[9] == '1' then
  local existing = redis.call('GET', KEYS[6])
  if existing and redis.call('EXISTS', ARGV[10] .. existing) == 1 then
    return {0, existing}
  end
  redis.call('SET', KEYS[6], ARGV[3], 'PX', ARGV[8])
end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'status', 'queued', 'attempts', 0,
  'updated_at', ARGV[2], 'due_at', ARGV[2], 'claim', '', 'lease_until', 0,
  'stream', KEYS[2], 'cost', ARGV[4], 'max_attempts', ARGV[5], 'result', '', 'error', '')
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[2], 'workers', '0', 'MKSTREAM')
end
redis.call('HSET', KEYS[1], 'entry', redis.call('XADD', KEYS[2], '*', 'id', ARGV[3]))
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'queued', 1)
redis.call('HINCRBY', KEYS[3], 'cost', ARGV[4])
redis.call('SADD', KEYS[5], ARGV[7])
return {1, ARGV[3]}
"#;

/// Claims a queue's due tasks, highest priority stream first: entries whose
/// worker held them longer than the lease (`XPENDING … IDLE` + `XCLAIM`),
/// then new ones (`XREADGROUP >`). Returns `{entry, stream, id, token}` per
/// task taken; the records are read afterwards (a retryable read).
pub const TASK_CLAIM: &str = r#"#!lua
local out = {}
local n = 0
local max = tonumber(ARGV[2])
local now = tonumber(ARGV[4])
local function drop(stream, entry)
  redis.call('XACK', stream, 'workers', entry)
  redis.call('XDEL', stream, entry)
end
local function take(stream, entry, id, reclaimed)
  local key = ARGV[6] .. id
  local status = redis.call('HGET', key, 'status')
  if redis.call('HGET', key, 'entry') ~= entry or
      (status ~= 'queued' and status ~= 'failed' and status ~= 'running') then
    drop(stream, entry)
    return
  end
  local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0')
  if status == 'running' then
    if not reclaimed then return end
    if attempts >= tonumber(redis.call('HGET', key, 'max_attempts') or '1') then
      redis.call('HSET', key, 'status', 'dead', 'error', ARGV[7], 'claim', '', 'lease_until', 0,
        'updated_at', now, 'entry', '')
      redis.call('HINCRBY', KEYS[4], 'running', -1)
      redis.call('HINCRBY', KEYS[4], 'cost', -tonumber(redis.call('HGET', key, 'cost') or '0'))
      redis.call('SADD', KEYS[5], id)
      redis.call('PEXPIRE', key, ARGV[9])
      drop(stream, entry)
      return
    end
    redis.call('HSET', key, 'error', ARGV[8])
  else
    redis.call('HINCRBY', KEYS[4], 'queued', -1)
    redis.call('HINCRBY', KEYS[4], 'running', 1)
  end
  n = n + 1
  local token = ARGV[5] .. n
  redis.call('HSET', key, 'status', 'running', 'attempts', attempts + 1, 'claim', token,
    'lease_until', now + tonumber(ARGV[3]), 'updated_at', now)
  out[#out + 1] = {entry, stream, id, token}
end
for i = 1, 3 do
  local stream = KEYS[i]
  if n < max and redis.call('EXISTS', stream) == 1 then
    local idle = redis.call('XPENDING', stream, 'workers', 'IDLE', ARGV[3], '-', '+', max - n)
    for _, p in ipairs(idle) do
      if n < max then
        local got = redis.call('XCLAIM', stream, 'workers', ARGV[1], ARGV[3], p[1])
        if got[1] and got[1][2] then take(stream, got[1][1], got[1][2][2], true) end
      end
    end
    if n < max then
      local read = redis.call('XREADGROUP', 'GROUP', 'workers', ARGV[1], 'COUNT', max - n, 'STREAMS', stream, '>')
      if read then
        for _, e in ipairs(read[1][2]) do
          if e[2] then take(stream, e[1], e[2][2], false) else drop(stream, e[1]) end
        end
      end
    end
  end
end
return out
"#;

/// Records an attempt's outcome under the claim token that holds the task.
pub const TASK_FINISH: &str = r#"#!lua
if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[1] then return 0 end
redis.call('XACK', KEYS[2], 'workers', ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'running', -1)
redis.call('HSET', KEYS[1], 'claim', '', 'lease_until', 0, 'updated_at', ARGV[4], 'entry', '')
local kind = ARGV[3]
if kind == 'succeeded' then
  redis.call('HSET', KEYS[1], 'status', 'succeeded', 'result', ARGV[5], 'error', '')
elseif kind == 'dead' then
  redis.call('HSET', KEYS[1], 'status', 'dead', 'error', ARGV[5])
  redis.call('SADD', KEYS[5], ARGV[8])
else
  if kind == 'retry' then
    redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[5], 'due_at', ARGV[6])
  else
    redis.call('HSET', KEYS[1], 'status', 'queued', 'due_at', ARGV[6])
    redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  end
  redis.call('HINCRBY', KEYS[3], 'queued', 1)
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[8])
  return 1
end
redis.call('HINCRBY', KEYS[3], 'cost', -tonumber(redis.call('HGET', KEYS[1], 'cost') or '0'))
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 1
"#;

/// Gives due delayed tasks (retries after their backoff) a new stream entry.
pub const TASK_PROMOTE: &str = r#"#!lua
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(due) do
  local key = ARGV[2] .. id
  local status = redis.call('HGET', key, 'status')
  local stream = redis.call('HGET', key, 'stream')
  if (status == 'queued' or status == 'failed') and stream then
    redis.call('HSET', key, 'entry', redis.call('XADD', stream, '*', 'id', id))
  end
  redis.call('ZREM', KEYS[1], id)
end
return #due
"#;

/// Cancels a waiting task (its stream entry, if it has one, goes too).
pub const TASK_CANCEL: &str = r#"#!lua
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'failed' then
  local entry = redis.call('HGET', KEYS[1], 'entry')
  local stream = redis.call('HGET', KEYS[1], 'stream')
  if entry and entry ~= '' and stream then
    redis.call('XDEL', stream, entry)
  end
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_at', ARGV[1], 'entry', '')
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('HINCRBY', KEYS[2], 'queued', -1)
  redis.call('HINCRBY', KEYS[2], 'cost', -tonumber(redis.call('HGET', KEYS[1], 'cost') or '0'))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Queues a dead or cancelled task again, its attempts reset.
pub const TASK_REQUEUE: &str = r#"#!lua
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'dead' or status == 'cancelled' then
  redis.call('PERSIST', KEYS[1])
  redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0, 'error', '', 'result', '',
    'due_at', ARGV[1], 'updated_at', ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[2])
  redis.call('HSET', KEYS[1], 'entry', redis.call('XADD', KEYS[4], '*', 'id', ARGV[2]))
  redis.call('HINCRBY', KEYS[2], 'queued', 1)
  redis.call('HINCRBY', KEYS[2], 'cost', tonumber(redis.call('HGET', KEYS[1], 'cost') or '0'))
  return 1
end
return 0
"#;
