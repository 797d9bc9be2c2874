-- fsdp.log: rank-0 console output with timestamps. Other ranks stay quiet
-- unless told otherwise (errors always name their rank).
local M = {}

M.rank = tonumber(os.getenv('RANK') or os.getenv('PMI_RANK') or os.getenv('SLURM_PROCID') or '0') or 0
M.quiet = false
-- called before a line is written (the progress bar clears itself here)
M.before_line = nil

local t0 = os.time()

function M.stamp() return os.date('%H:%M:%S') end

-- printf on rank 0, with a timestamp
function M.info(fmt, ...)
   if M.rank ~= 0 or M.quiet then return end
   if M.before_line then M.before_line() end
   io.stdout:write('[' .. M.stamp() .. '] ' .. string.format(fmt, ...) .. '\n')
   io.stdout:flush()
end

-- printf on every rank, prefixed by the rank
function M.all(fmt, ...)
   io.stdout:write(string.format('[%s rank %d] ', M.stamp(), M.rank) .. string.format(fmt, ...) .. '\n')
   io.stdout:flush()
end

function M.warn(fmt, ...)
   if M.before_line then M.before_line() end
   io.stderr:write(string.format('[%s rank %d] warning: ', M.stamp(), M.rank) .. string.format(fmt, ...) .. '\n')
end

function M.elapsed() return os.time() - t0 end

-- bytes as a short human string
function M.bytes(n)
   local units = {'B', 'KiB', 'MiB', 'GiB', 'TiB'}
   local i = 1
   while n >= 1024 and i < #units do n = n / 1024; i = i + 1 end
   return string.format(i == 1 and '%d %s' or '%.1f %s', n, units[i])
end

return M
