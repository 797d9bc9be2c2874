/* fsdp-lua - the executable: a LuaJIT interpreter that knows where the
 * project's Lua code and libfsdp.so live and hands its arguments to
 * lua/fsdp/main.lua. Everything else (recipes, the REPL, the launcher,
 * sub-commands) is Lua.
 *
 * The root is found from /proc/self/exe (build/fsdp-lua -> root), or from
 * FSDP_ROOT when set. */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

static int find_root(char *root, size_t cap) {
    const char *env = getenv("FSDP_ROOT");
    if (env && *env) {
        snprintf(root, cap, "%s", env);
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return -1;
    exe[n] = 0;
    char *dir = dirname(exe);          /* .../build */
    char *parent = dirname(strdup(dir)); /* .../ */
    snprintf(root, cap, "%s", parent);
    return 0;
}

static int traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (!msg) msg = "(error object is not a string)";
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int main(int argc, char **argv) {
    char root[PATH_MAX];
    if (find_root(root, sizeof root) != 0) {
        fprintf(stderr, "fsdp-lua: cannot find the installation root (set FSDP_ROOT)\n");
        return 2;
    }
    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "fsdp-lua: cannot create a Lua state\n");
        return 2;
    }
    luaL_openlibs(L);

    char path[3 * PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/lua/?.lua;%s/lua/?/init.lua;%s", root, root,
             "./?.lua;./?/init.lua");
    lua_getglobal(L, "package");
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    lua_pushstring(L, root);
    lua_setglobal(L, "FSDP_ROOT");

    lua_createtable(L, argc, 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_setglobal(L, "arg");

    char main_path[PATH_MAX + 32];
    snprintf(main_path, sizeof main_path, "%s/lua/fsdp/main.lua", root);
    lua_pushcfunction(L, traceback);
    if (luaL_loadfile(L, main_path) != 0) {
        fprintf(stderr, "fsdp-lua: %s\n", lua_tostring(L, -1));
        lua_close(L);
        return 2;
    }
    int rc = 0;
    if (lua_pcall(L, 0, 1, -2) != 0) {
        /* main.lua reports user errors itself; this is an internal failure */
        fprintf(stderr, "fsdp-lua: internal error: %s\n", lua_tostring(L, -1));
        rc = 1;
    } else if (lua_isnumber(L, -1)) {
        rc = (int)lua_tointeger(L, -1);
    }
    lua_close(L);
    return rc;
}
