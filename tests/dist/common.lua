-- tests/dist/common.lua: helpers for the multi-rank tests, which drive
-- real jobs (fsdp-lua --nproc-per-node N, i.e. MPICH's mpiexec) and compare
-- what they logged and saved.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local st = require 'fsdp.safetensors'
local ckpt = require 'fsdp.checkpoint'
local ffi = fsdp.ffi

local M = {}
M.bin = fsdp.root .. '/build/fsdp-lua'

function M.tmpdir()
   local d = os.tmpname()
   os.remove(d)
   os.execute('mkdir -p ' .. d)
   return d
end

-- runs the recipe on n ranks (n = 1: a plain process); returns status, output
function M.run(n, args)
   local cmd = n > 1 and (M.bin .. ' --nproc-per-node ' .. n .. ' ') or (M.bin .. ' ')
   return t.sh('OMP_NUM_THREADS=1 timeout 300 ' .. cmd .. args)
end

-- {step -> loss} from a metrics file
function M.losses(path)
   local out = {}
   for line in io.lines(path) do
      local m = fsdp.json.decode(line)
      if m.loss then out[m.step] = m.loss end
   end
   return out
end

-- every unit's full flat parameters (or optimizer state: key) from a step
-- directory, whatever world size saved it: {unit name -> Lua array}
function M.flat(step_dir, key)
   key = key or 'param'
   local index = ckpt.read_index(step_dir)
   local out = {}
   for _, u in ipairs(index.units) do
      local S = u.padded / index.world_size
      local vals = {}
      for r = 0, index.world_size - 1 do
         local f = st.open(step_dir .. '/' .. ckpt.rank_file(r))
         local p = ffi.cast('const float*', (f:data(u.name .. '.' .. key)))
         for i = 0, S - 1 do
            local g = r * S + i
            if g < u.numel then vals[g + 1] = p[i] end
         end
         f:close()
      end
      out[u.name] = vals
   end
   return out
end

-- largest |a - b| / max |b| over each unit (relative to the unit's scale)
function M.max_rel_diff(a, b)
   local worst, where = 0, nil
   for name, vb in pairs(b) do
      local va = a[name]
      if not va or #va ~= #vb then return math.huge, name end
      local scale, diff = 0, 0
      for i = 1, #vb do
         scale = math.max(scale, math.abs(vb[i]))
         diff = math.max(diff, math.abs(va[i] - vb[i]))
      end
      local rel = diff / math.max(scale, 1e-30)
      if rel > worst then worst, where = rel, name end
   end
   return worst, where
end

return M
