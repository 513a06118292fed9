"""Lua scripts for presence. Each touches only one room's keys, which share the hash tag
`{room_id}`, so every script runs on one Redis Cluster slot and never raises CROSSSLOT.

Keys: KEYS[1] is the room's member hash (user_id -> "session_id|username") and KEYS[2]
its expiry sorted set (user_id -> expiry in ms, Redis server time, so instance clocks
never matter). Every write re-arms both keys' TTL: no key outlives its room. A resume
record `rdv:{room_id}:resume:<token hash>` is a hash (u user, n username, s session,
i instance, h held 0|1) that lives as long as the room's keys (so a member whose instance
died can resume until it is reaped: the scripts check its presence), or the grace once held.
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_ARM = """
local function arm(key_ttl)
  redis.call('PEXPIRE', KEYS[1], key_ttl)
  redis.call('PEXPIRE', KEYS[2], key_ttl)
end
local function session_of(value)
  return value and string.match(value, '^([^|]*)|') or nil
end
"""

_LIVE = """
local function live_members()
  local users = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
  local out = {}
  if #users > 0 then
    local values = redis.call('HMGET', KEYS[1], unpack(users))
    for i, user in ipairs(users) do
      if values[i] then
        table.insert(out, user)
        table.insert(out, values[i])
      end
    end
  end
  return out
end
"""

# KEYS[3]: the joiner's resume record key. ARGV: user_id, "session|username", capacity,
# ttl_ms, key_ttl_ms, then instance_id ('' for no resume record), session_id, username
# -> {1, previous_value_or_"", user, value, ...} or {0} when the room is full.
JOIN = (
    _NOW
    + _ARM
    + _LIVE
    + """
local user, value = ARGV[1], ARGV[2]
local capacity, ttl, key_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local previous = redis.call('HGET', KEYS[1], user)
local expires = redis.call('ZSCORE', KEYS[2], user)
local replaced = ''
if previous and expires and tonumber(expires) > now then
  replaced = previous
elseif redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf') >= capacity then
  return {0}
end
redis.call('HSET', KEYS[1], user, value)
redis.call('ZADD', KEYS[2], now + ttl, user)
arm(key_ttl)
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[3], 'u', user, 's', ARGV[7], 'n', ARGV[8], 'i', ARGV[6], 'h', '0')
  redis.call('PEXPIRE', KEYS[3], key_ttl)
end
local result = {1, replaced}
for _, item in ipairs(live_members()) do table.insert(result, item) end
return result
"""
)

# KEYS[3]: the session's resume record key (deleted in any case: the session ended).
# ARGV: user_id, session_id -> 1 if this session was removed, else 0.
LEAVE = (
    _ARM
    + """
redis.call('DEL', KEYS[3])
if session_of(redis.call('HGET', KEYS[1], ARGV[1])) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
)

# KEYS[2 + n]: the n-th member's resume record key. ARGV: ttl_ms, key_ttl_ms, then
# user_id, session_id pairs. Extends live entries of these very sessions only (an expired
# one belongs to the reaper), and their resume records unless held (the grace rules those).
REFRESH = (
    _NOW
    + _ARM
    + """
local ttl, key_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  local user, session = ARGV[i], ARGV[i + 1]
  local expires = redis.call('ZSCORE', KEYS[2], user)
  if expires and tonumber(expires) > now
      and session_of(redis.call('HGET', KEYS[1], user)) == session then
    redis.call('ZADD', KEYS[2], 'XX', now + ttl, user)
    local record = KEYS[2 + (i - 1) / 2]
    if redis.call('HGET', record, 's') == session and redis.call('HGET', record, 'h') == '0' then
      redis.call('PEXPIRE', record, key_ttl)
    end
  end
end
if redis.call('HLEN', KEYS[1]) > 0 then arm(key_ttl) end
return 1
"""
)

# KEYS[3...]: the resume record keys of the members that have one. ARGV: ttl_ms,
# key_ttl_ms, instance_id, then user_id, "session|username", session_id, username, k
# quintuples (k: that member's record is KEYS[k]; 0: it has none). After an outage: put
# back what Redis lost, extend what it kept; never overwrite another session. A member
# put back gets its resume record back too (a restarted Redis lost them all), so its
# client can still resume.
REASSERT = (
    _NOW
    + _ARM
    + """
local ttl, key_ttl, instance = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
for i = 4, #ARGV, 5 do
  local user, value, session, name = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local k = tonumber(ARGV[i + 4])
  local current = redis.call('HGET', KEYS[1], user)
  if not current or current == value then
    redis.call('HSET', KEYS[1], user, value)
    redis.call('ZADD', KEYS[2], now + ttl, user)
    local record = KEYS[k]
    if k > 0 and redis.call('EXISTS', record) == 0 then
      redis.call('HSET', record, 'u', user, 's', session, 'n', name, 'i', instance, 'h', '0')
      redis.call('PEXPIRE', record, key_ttl)
    end
  end
end
arm(key_ttl)
return 1
"""
)

# -> {user, value, ...} of the live members.
MEMBERS = (
    _NOW
    + _LIVE
    + """
return live_members()
"""
)

# -> {user, value, ...} of the expired members this call removed. Atomic, so each
# expired member is claimed by exactly one caller across all instances.
REAP = (
    _NOW
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
local out = {}
for _, user in ipairs(expired) do
  redis.call('ZREM', KEYS[2], user)
  local value = redis.call('HGET', KEYS[1], user)
  if value then
    redis.call('HDEL', KEYS[1], user)
    table.insert(out, user)
    table.insert(out, value)
  end
end
return out
"""
)

# ARGV: user_id -> the removed "session|username" if the user was live, else ''. An
# expired entry stays: the reaper announces it (as `timeout`), exactly once.
EVICT = (
    _NOW
    + """
local user = ARGV[1]
local expires = redis.call('ZSCORE', KEYS[2], user)
local value = redis.call('HGET', KEYS[1], user)
if not (value and expires and tonumber(expires) > now) then
  return ''
end
redis.call('HDEL', KEYS[1], user)
redis.call('ZREM', KEYS[2], user)
return value
"""
)

# -> {user, value, ...} of the live members, all removed in this one step.
EVICT_ALL = (
    _NOW
    + _LIVE
    + """
local live = live_members()
for i = 1, #live, 2 do
  redis.call('HDEL', KEYS[1], live[i])
  redis.call('ZREM', KEYS[2], live[i])
end
return live
"""
)

# -> how many live members the room has (as MEMBERS would list them).
COUNT = (
    _NOW
    + _LIVE
    + """
return #live_members() / 2
"""
)

# KEYS[3]: the resume record. ARGV: session_id, grace_ms. Marks the record held and cuts
# its life to the grace; a record of another session is left alone.
HOLD = """
if redis.call('HGET', KEYS[3], 's') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[3], 'h', '1')
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
"""

# KEYS[3]: the presented record, KEYS[4]: the new one. ARGV: user_id, ttl_ms, key_ttl_ms,
# instance_id -> {1, session, username, instance, held} when claimed; {0} unknown, spent,
# expired or its session gone (reaped, left, replaced); {-1} another user's token.
CLAIM = (
    _NOW
    + _ARM
    + """
local record = redis.call('HMGET', KEYS[3], 'u', 's', 'n', 'i', 'h')
if not record[1] then return {0} end
if record[1] ~= ARGV[1] then return {-1} end
redis.call('DEL', KEYS[3])
if session_of(redis.call('HGET', KEYS[1], record[1])) ~= record[2] then return {0} end
local ttl, key_ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], now + ttl, record[1])
arm(key_ttl)
redis.call('HSET', KEYS[4], 'u', record[1], 's', record[2], 'n', record[3], 'i', ARGV[4], 'h', '0')
redis.call('PEXPIRE', KEYS[4], key_ttl)
return {1, record[2], record[3], record[4], record[5]}
"""
)

# KEYS[3]: the held member's record. ARGV: user_id, session_id -> 1 if removed. A record
# already claimed by a resume (deleted) leaves the member in place.
RELEASE_HELD = (
    _ARM
    + """
if redis.call('HGET', KEYS[3], 's') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[3])
if session_of(redis.call('HGET', KEYS[1], ARGV[1])) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
)

# KEYS[1]: a held session's stream -> its entries, oldest first; the stream is deleted.
TAKE_HELD = """
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
redis.call('DEL', KEYS[1])
return entries
"""
