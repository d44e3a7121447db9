//! The Lua scripts of the Redis [`Store`](crate::Store) (see the
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
