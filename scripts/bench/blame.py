#!/usr/bin/env python3
"""Which line of jwtgate's own source each instruction of a request comes from.

    scripts/bench/blame.py CALLGRIND_FILE REQUESTS BINARY [TOP]

CALLGRIND_FILE is a callgrind dump made with --dump-instr=yes (scripts/bench/instructions.sh
with BLAME=1 makes one and runs this), REQUESTS the requests it counted, BINARY the jwtgate it
ran, built with line tables (CARGO_PROFILE_RELEASE_DEBUG=line-tables-only; see
scripts/pgo/build.sh for the profile-guided one).

With fat LTO almost everything is inlined into a few large functions, so callgrind's own
per-function view says little. Here every instruction address is looked up with
`addr2line -i` and charged to the innermost inlined frame that lies in this repository's src/
(src/main.rs, the global allocator's shim, is skipped for the frame that called it). A call
from such an address to a function with no frame of ours (hyper's header parser, memcpy,
malloc) is charged, with all it costs, to the calling line. Instructions with no frame of ours
are listed by function at the end (a function called from our lines is in both lists).
"""
import collections
import os
import re
import subprocess
import sys

if len(sys.argv) < 4:
    sys.exit(__doc__)
path, n, binary = sys.argv[1], int(sys.argv[2]), os.path.abspath(sys.argv[3])
top = int(sys.argv[4]) if len(sys.argv) > 4 else 40
root = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
src = root + '/src/'
shim = src + 'main.rs'

# The callgrind format (valgrind's docs, "Callgrind Format Specification"): names may be
# compressed to "(id)" after their first use; positions ("instr line") may be relative to
# the previous line's ("+n", "-n") or the same ("*").
names = {}


def name(kind, rest):
    m = re.match(r'\((\d+)\)(?: (.*))?', rest)
    if not m:
        return rest
    key = (kind, m.group(1))
    if m.group(2) is not None:
        names[key] = m.group(2)
    return names.get(key, '?')


last = [0, 0]


def position(tokens):
    for i, t in enumerate(tokens[:2]):
        if t[0] in '+-':
            last[i] += int(t, 0)
        elif t != '*':
            last[i] = int(t, 0)
    return last[0]


ob = None
fn = cfn = '?'
in_call = False
own = collections.Counter()       # address in BINARY -> instructions executed there
fn_of = {}                        # address -> the function callgrind names for it
calls = collections.Counter()     # (address, callee) -> instructions the call cost
elsewhere = collections.Counter()  # instructions in other objects (libc), by function
for line in open(path, errors='replace'):
    line = line.rstrip('\n')
    if line.startswith('ob='):
        ob = name('o', line[3:])
    elif line.startswith(('fl=', 'fi=', 'fe=')):
        name('f', line[3:])
    elif line.startswith(('cob=', 'cfi=', 'cfl=')):
        name('o' if line.startswith('cob=') else 'f', line[4:])
    elif line.startswith('fn='):
        fn = name('n', line[3:])
    elif line.startswith('cfn='):
        cfn = name('n', line[4:])
    elif line.startswith('calls='):
        in_call = True
    elif line and (line[0].isdigit() or line[0] in '+-*'):
        parts = line.split()
        address = position(parts)
        cost = int(parts[2]) if len(parts) > 2 else 0
        mine = ob == binary
        if in_call:
            if mine:
                calls[(address, cfn)] += cost
            in_call = False
        elif mine:
            own[address] += cost
            fn_of[address] = fn
        else:
            elsewhere[fn] += cost

addresses = sorted(set(own) | {a for a, _ in calls})
frames = collections.defaultdict(list)
out = subprocess.run(['addr2line', '-e', binary, '-i', '-f', '-C', '-a'] +
                     [hex(a) for a in addresses], capture_output=True, text=True,
                     check=True).stdout.splitlines()
i = 0
current = None
while i < len(out):
    if out[i].startswith('0x'):
        current = int(out[i], 16)
        i += 1
    else:
        frames[current].append((out[i], out[i + 1]))
        i += 2


def our_line(address):
    for _, where in frames.get(address, []):
        if where.startswith(src) and not where.startswith(shim):
            return where[len(root) + 1:].split(' ')[0]
    return None


if not any(our_line(a) for a in own):
    sys.exit(f'no instruction of {binary} has a line in {src}: is it built with line tables '
             '(CARGO_PROFILE_RELEASE_DEBUG=line-tables-only) from this checkout?')

# A function with any instruction of ours is counted by its own instructions, not as a call.
ours = {fn_of[a] for a in own if our_line(a)}
by_line = collections.Counter()
by_file = collections.Counter()
inlined = collections.defaultdict(collections.Counter)
outside = collections.Counter(elsewhere)
for address, cost in own.items():
    where = our_line(address)
    if where:
        by_line[where] += cost
        by_file[where.split(':')[0]] += cost
        inlined[where][frames[address][0][0][:90]] += cost
    else:
        outside[fn_of[address]] += cost
for (address, callee), cost in calls.items():
    where = our_line(address)
    if where and callee not in ours and not callee.startswith('jwtgate::'):
        by_line[f'{where} -> {callee[:70]}'] += cost
        by_file[where.split(':')[0]] += cost

total = sum(own.values()) + sum(elsewhere.values())
print(f'{total / n:.0f} instructions per request; {sum(by_file.values()) / n:.0f} charged to '
      f'lines of {src}')
print('\n-- by file: instructions inlined from it, and what its calls into libraries cost')
for k, v in by_file.most_common():
    if v >= n:
        print(f'{v / n:7.0f}  {k}')
print(f'\n-- by line (top {top})')
for k, v in by_line.most_common(top):
    print(f'{v / n:7.0f}  {k}')
print('\n-- what is inlined under the top lines (the innermost function)')
for k, v in [kv for kv in by_line.most_common() if '->' not in kv[0]][:10]:
    print(f'{v / n:7.0f}  {k}')
    for f, c in inlined[k].most_common(5):
        print(f'   {c / n:7.0f}  {f}')
print('\n-- instructions in functions with no frame of ours, by function (their own only;\n'
      '   most are also in the calls charged above)')
for k, v in outside.most_common(20):
    if v >= n:
        print(f'{v / n:7.0f}  {k[:110]}')
