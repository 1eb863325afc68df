-- Replays pre-signed requests; each wrk thread takes every Nth line so no two threads send the same event.
-- Optional third argument: a pause in ms before each connection's next request (a paced load).
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  pause = tonumber(args[3] or "0")
  reqs = {}
  i = 0
  local n = 0
  for line in io.lines(file) do
    if n % nthreads == tid then
      local sig, body = line:match("([^\t]+)\t(.*)")
      reqs[#reqs + 1] = wrk.format("POST", "/webhooks/platform",
        {["Content-Type"] = "application/json", ["Platform-Signature"] = sig}, body)
    end
    n = n + 1
  end
end

function request()
  i = i + 1
  if i > #reqs then i = 1 end
  return reqs[i]
end

function delay()
  return pause
end
