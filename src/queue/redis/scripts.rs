//! The queue's Lua scripts: each change is one atomic step in Redis.

/// KEYS: open, stream, waiting, then one hash per message. ARGV: groups, each its
/// message count, max_queued, then per message id, JSON, created ms, TTL ms, and when it
/// is due (ms; 0: now). Each group is queued whole or not at all (when it would make
/// more than max_queued open messages). Returns one flag per group: 1 queued, 0 full.
pub(super) const ENQUEUE: &str = r#"
local open = redis.call('ZCARD', KEYS[1])
local queued = {}
local a, k = 1, 4
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local fits = open + n <= tonumber(ARGV[a + 1])
  a = a + 2
  if fits then
    for i = 0, n - 1 do
      local base = a + i * 5
      local id = ARGV[base]
      redis.call('HSET', KEYS[k + i], 'version', 1, 'status', 'queued', 'json', ARGV[base + 1])
      redis.call('PEXPIRE', KEYS[k + i], ARGV[base + 3])
      redis.call('ZADD', KEYS[1], ARGV[base + 2], id)
      if ARGV[base + 4] == '0' then
        redis.call('XADD', KEYS[2], '*', 'id', id)
      else
        redis.call('ZADD', KEYS[3], ARGV[base + 4], id)
      end
    end
    open = open + n
  end
  queued[#queued + 1] = fits and 1 or 0
  a = a + n * 5
  k = k + n
end
return queued
"#;

/// KEYS: hash, stream, waiting, leases, open, outbox, notice. ARGV: id, version read,
/// status, JSON, entry to acknowledge ('' for none; `TRIM` later drops it), placement
/// (due, leased, final), its time (ms since the epoch) or the retention (ms), the
/// notice's JSON ('' for none), now (ms). Returns the new version, 0 when another writer came first, -1 when the message
/// is gone.
pub(super) const CHANGE: &str = r#"
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return -1 end
if v ~= ARGV[2] then return 0 end
local nv = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'version', nv, 'status', ARGV[3], 'json', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('XACK', KEYS[2], 'relay', ARGV[5])
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if ARGV[6] == 'due' then
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
elseif ARGV[6] == 'leased' then
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
else
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  if ARGV[8] ~= '' then
    redis.call('SET', KEYS[7], ARGV[8])
    redis.call('ZADD', KEYS[6], ARGV[9], ARGV[1])
  end
end
return nv
"#;

/// KEYS: waiting, stream. ARGV: now (ms), most to move. Moves what is due to the stream.
pub(super) const PROMOTE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], '*', 'id', id)
end
return #due
"#;

/// KEYS: outbox. ARGV: now (ms), most to take, hold until (ms). Takes the notices due,
/// each held (its due time moved) so that no other replica takes it meanwhile.
pub(super) const TAKE_NOTICES: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[3], id)
end
return due
"#;

/// KEYS: the streams. ARGV: the group. Drops the entries the group is done with: those
/// before its oldest pending entry, or, with none pending, up to the last it read. An
/// entry not yet read or not yet acknowledged stays. One trim a sweep instead of an
/// `XDEL` per message: deleting one entry walks its listpack node (and, for the first
/// entry, the stream's edge) over every deleted entry before it.
pub(super) const TRIM: &str = r#"
for _, stream in ipairs(KEYS) do
  if redis.call('EXISTS', stream) == 1 then
    local last
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
      local info = {}
      for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
      if info['name'] == ARGV[1] then last = info['last-delivered-id'] end
    end
    if last then
      local pending = redis.call('XPENDING', stream, ARGV[1])
      local keep
      if pending[1] > 0 then
        keep = pending[2]
      else
        local ms, seq = string.match(last, '^(%d+)-(%d+)$')
        keep = ms .. '-' .. string.format('%d', tonumber(seq) + 1)
      end
      redis.call('XTRIM', stream, 'MINID', keep)
    end
  end
end
return 0
"#;
