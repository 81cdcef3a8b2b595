-- wrk script for benches/api_load.sh.
--
--   wrk ... -s benches/api_load_upload.lua URL -- MODE [CLIP]
--
-- MODE:
--   get       plain GET of URL (only the summary line below is added)
--   same      POST URL, multipart/form-data with CLIP as the `audio` field,
--             the same bytes every time: after the first request the job
--             exists, so this measures the idempotent path (200)
--   distinct  as `same`, but every request overwrites 16 bytes at the start
--             of the WAV's PCM data with a per-thread, per-request counter
--             (8 samples, under a millisecond), so each upload is new audio,
--             a new job (202), stored and queued for transcription
--
-- The Authorization header comes from wrk's -H. done() prints one line,
--   MMT_RESULT mode=... requests=... seconds=... rps=... p50_ms=... p90_ms=...
--   p99_ms=... max_ms=... socket_errors=... status_errors=... created=...
--   existing=... other=...
-- which the shell script turns into its table (created/existing/other are
-- the 202/200/other status counts, counted in upload modes only).

local threads = {}
local counter = 0

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

local function read_file(path)
  local file = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local data = file:read("*a")
  file:close()
  return data
end

-- Offset (1-based, Lua) of the first byte of the WAV "data" chunk's payload.
local function pcm_offset(wav)
  assert(wav:sub(1, 4) == "RIFF" and wav:sub(9, 12) == "WAVE", "not a WAV file")
  local pos = 13
  while pos + 8 <= #wav do
    local id = wav:sub(pos, pos + 3)
    local b1, b2, b3, b4 = wav:byte(pos + 4, pos + 7)
    local size = b1 + b2 * 256 + b3 * 65536 + b4 * 16777216
    if id == "data" then
      return pos + 8
    end
    pos = pos + 8 + size + (size % 2)
  end
  error("no data chunk in the WAV file")
end

function init(args)
  mode = args[1] or "get"
  created, existing, other = 0, 0, 0
  if mode == "get" then
    return
  end
  assert(mode == "same" or mode == "distinct", "MODE is get, same or distinct")
  local clip = assert(args[2], "upload modes need the clip path")
  local wav = read_file(clip)
  local name = clip:match("([^/]+)$")
  local boundary = "mmt-wrk-boundary-7f3a9c1e5b"
  local head = "--" .. boundary .. "\r\n"
    .. 'Content-Disposition: form-data; name="audio"; filename="' .. name .. '"\r\n'
    .. "Content-Type: audio/wav\r\n\r\n"
  local tail = "\r\n--" .. boundary .. "--\r\n"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary

  if mode == "same" then
    wrk.body = head .. wav .. tail
  else
    local at = pcm_offset(wav)
    assert(#wav >= at + 16, "the clip has too little PCM data")
    local before = head .. wav:sub(1, at - 1)
    local after = wav:sub(at + 16) .. tail
    local tag = string.format("%02x", thread_index % 256)
    request = function()
      counter = counter + 1
      local body = before .. tag .. string.format("%014x", counter) .. after
      return wrk.format(nil, nil, nil, body)
    end
  end

  response = function(status, headers, body)
    if status == 202 then
      created = created + 1
    elseif status == 200 then
      existing = existing + 1
    else
      other = other + 1
      if other <= 3 then
        io.stderr:write(string.format("api_load_upload.lua: HTTP %d: %s\n", status, body:sub(1, 300)))
      end
    end
  end
end

function done(summary, latency, requests)
  local c, e, o = 0, 0, 0
  for _, thread in ipairs(threads) do
    c = c + (thread:get("created") or 0)
    e = e + (thread:get("existing") or 0)
    o = o + (thread:get("other") or 0)
  end
  local seconds = summary.duration / 1e6
  local err = summary.errors
  local mode_name = threads[1] and threads[1]:get("mode") or "?"
  io.write(string.format(
    "MMT_RESULT mode=%s requests=%d seconds=%.2f rps=%.1f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f "
      .. "socket_errors=%d status_errors=%d created=%d existing=%d other=%d\n",
    mode_name, summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    err.connect + err.read + err.write + err.timeout, err.status, c, e, o))
end
