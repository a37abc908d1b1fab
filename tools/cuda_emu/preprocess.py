#!/usr/bin/env python3
"""Rewrite a .cu file for the CPU emulation (g++):
  callee<<<grid, block[, smem[, stream]]>>>(args)
    -> ::emu::launch("callee", callee, ::emu::Cfg(grid, block[, smem[, stream]]), args)
  extern __shared__ T name[];  ->  T *name = (T *)::emu::dyn_smem();
Line numbers are kept (no newline is added or removed)."""
import re
import sys

IDENT = re.compile(r'[A-Za-z0-9_]')


def skip_ws_back(s, i):
    while i >= 0 and s[i] in ' \t\r\n\\':
        i -= 1
    return i


def match_back(s, i, close, open_):
    """s[i] == close; return the index of its matching open bracket"""
    depth = 0
    while i >= 0:
        c = s[i]
        if c == close:
            depth += 1
        elif c == open_:
            depth -= 1
            if depth == 0:
                return i
        i -= 1
    raise ValueError('unbalanced %s' % close)


def callee_start(s, end):
    """s[:end] ends with the callee expression (maybe followed by spaces); its start index"""
    i = skip_ws_back(s, end - 1)
    start = i + 1
    while True:
        if i < 0:
            break
        c = s[i]
        if c == ')':
            j = match_back(s, i, ')', '(')
            start = j
            k = skip_ws_back(s, j - 1)
            if k >= 0 and IDENT.match(s[k]):
                i = k
                continue
            break
        if c == ']':
            j = match_back(s, i, ']', '[')
            start = j
            i = skip_ws_back(s, j - 1)
            continue
        if c == '>':
            j = match_back(s, i, '>', '<')
            start = j
            i = skip_ws_back(s, j - 1)
            continue
        if IDENT.match(c):
            j = i
            while j >= 0 and IDENT.match(s[j]):
                j -= 1
            start = j + 1
            k = skip_ws_back(s, j)
            if k >= 0 and s[k] == '.':
                i = skip_ws_back(s, k - 1)
                continue
            if k >= 1 and s[k - 1:k + 1] in ('->', '::'):
                i = skip_ws_back(s, k - 2)
                continue
            break
        break
    return start


def match_fwd(s, i):
    """s[i] is an opening bracket; index of the matching close (strings and chars skipped)"""
    pairs = {'(': ')', '[': ']', '{': '}'}
    stack = []
    while i < len(s):
        c = s[i]
        if c in '"\'':
            q = c
            i += 1
            while s[i] != q:
                i += 2 if s[i] == '\\' else 1
        elif c in pairs:
            stack.append(pairs[c])
        elif c in ')]}':
            if not stack or stack.pop() != c:
                raise ValueError('unbalanced at %d' % i)
            if not stack:
                return i
        i += 1
    raise ValueError('unterminated')


def find_cfg_end(s, i):
    """s[i:] starts after <<<; index of the >>> that closes it"""
    depth = 0
    while i < len(s):
        if s.startswith('>>>', i) and depth == 0:
            return i
        c = s[i]
        if c in '([{':
            depth += 1
        elif c in ')]}':
            depth -= 1
        i += 1
    raise ValueError('no >>>')


def code_mask(s):
    """True for each character outside comments and string/char literals"""
    m = [True] * len(s)
    i = 0
    while i < len(s):
        if s.startswith('//', i):
            j = s.find('\n', i)
            j = len(s) if j < 0 else j
        elif s.startswith('/*', i):
            j = s.find('*/', i + 2) + 2
        elif s[i] in '"\'' and not (s[i] == "'" and i > 0 and s[i - 1].isalnum()):
            q = s[i]
            j = i + 1
            while s[j] != q:
                j += 2 if s[j] == '\\' else 1
            j += 1
        else:
            i += 1
            continue
        for k in range(i, j):
            m[k] = False
        i = j
    return m


def rewrite_launches(s):
    out = []
    pos = 0
    n = 0
    mask = code_mask(s)
    scan = 0
    while True:
        at = s.find('<<<', scan)
        if at < 0:
            break
        scan = at + 3
        if not mask[at]:
            continue
        cs = callee_start(s, at)
        if cs < pos:
            raise ValueError('callee overlaps an earlier launch near offset %d' % at)
        callee = s[cs:at]
        ce = find_cfg_end(s, at + 3)
        cfg = s[at + 3:ce]
        j = ce + 3
        while s[j] in ' \t\r\n\\':
            j += 1
        if s[j] != '(':
            raise ValueError('no argument list after >>> at offset %d' % ce)
        k = match_fwd(s, j)
        args = s[j + 1:k]
        name = ' '.join(callee.replace('\\\n', ' ').split()).replace('\\', '\\\\').replace('"', '\\"')
        repl = '::emu::launch("%s", %s, ::emu::Cfg(%s)' % (name, callee, cfg)
        if args.strip(' \t\r\n\\'):
            repl += ', ' + args
        else:
            repl += args  # keeps any newlines
        repl += ')'
        out.append(s[pos:cs])
        out.append(repl)
        pos = k + 1
        scan = pos
        n += 1
    out.append(s[pos:])
    return ''.join(out), n


SHARED = re.compile(r'extern\s+__shared__\s+([A-Za-z_][A-Za-z0-9_ \t]*?)\s*(\b[A-Za-z_][A-Za-z0-9_]*)\s*\[\s*\]\s*;')


def rewrite_shared(s):
    return SHARED.sub(lambda m: '%s *%s = (%s *)::emu::dyn_smem();' % (m.group(1), m.group(2), m.group(1)), s)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        s = f.read()
    s = rewrite_shared(s)
    s, n = rewrite_launches(s)
    with open(dst, 'w') as f:
        f.write('#line 1 "%s"\n' % src)
        f.write(s)
    sys.stderr.write('%s: %d launches rewritten\n' % (src, n))


if __name__ == '__main__':
    main()
