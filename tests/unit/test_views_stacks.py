"""Flame graph input and output without a kernel: stacks from counts, folded lines, speedscope, the SVG
(read back as XML) and its script (run by node against the frames of a real graph)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from usdtkit.collect.results import Counts
from usdtkit.errors import UsageError
from usdtkit.views import flamegraph
from usdtkit.views.stacks import folded_lines, parse_folded, speedscope, stacks_of

STACKS = {("main", "alpha", "leaf"): 3, ("main", "alpha", "hop", "leaf"): 5, ("main", "beta", "hop", "leaf"): 2}


def test_stacks_of_counts_put_the_other_fields_below_the_root_and_the_probe_only_when_several():
    one = Counts(("comm", "ustack"), {("p:a", "web", "main;f"): 4, ("p:a", "db", "main;f"): 1,
                                      ("p:a", None, "main;g"): 2})
    assert stacks_of(one) == {("web", "main", "f"): 4, ("db", "main", "f"): 1, ("comm=?", "main", "g"): 2}
    two = Counts(("ustack", "pid"), {("p:a", "main;f", 7): 1, ("p:b", "main;f", 7): 2, ("p:b", "", 8): 3})
    assert stacks_of(two) == {("p:a", "pid=7", "main", "f"): 1, ("p:b", "pid=7", "main", "f"): 2,
                              ("p:b", "pid=8", "[no stack]"): 3}
    with pytest.raises(UsageError, match="add ustack to --by"):
        stacks_of(Counts(("pid",), {("p:a", 1): 1}))


def test_folded_lines_round_trip_and_keep_separators_out_of_frames():
    assert parse_folded(folded_lines(STACKS)) == STACKS
    assert folded_lines({("a;b", "c\nd"): 2}) == ["a:b;c d 2"]
    assert parse_folded(["x;y 2", "", "x;y 3"]) == {("x", "y"): 5}
    with pytest.raises(UsageError, match="folded line 1"):
        parse_folded(["no count here"])


def test_speedscope_shares_frames_and_weighs_each_stack():
    doc = speedscope(STACKS, "t")
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert len(names) == len(set(names)) == 5
    (profile,) = doc["profiles"]
    got = {tuple(names[i] for i in s): w for s, w in zip(profile["samples"], profile["weights"])}
    assert got == STACKS and profile["endValue"] == 10 and profile["type"] == "sampled"


def test_every_frame_is_drawn_once_with_the_hits_under_it():
    svg = flamegraph.render(STACKS, title="t")
    got = {(name, depth): count for name, count, depth, _ in flamegraph.frames_of(svg)
           if name != "leaf" and name != "hop"}
    assert got == {("all", 0): 10, ("main", 1): 10, ("alpha", 2): 8, ("beta", 2): 2}
    leaves = sorted((count, depth) for name, count, depth, _ in flamegraph.frames_of(svg) if name == "leaf")
    assert leaves == [(2, 4), (3, 3), (5, 4)]


def test_hostile_names_stay_text_and_the_file_stays_xml():
    stacks = {("<script>alert(1)</script>", 'q"uote&amp', "ctl\x01\x1b", "bad\udcff"): 1}
    svg = flamegraph.render(stacks, title="<b>")
    ET.fromstring(svg)  # parses
    assert "<script>alert" not in svg and "\x01" not in svg
    names = [name for name, *_ in flamegraph.frames_of(svg)]
    assert names[1:] == ["<script>alert(1)</script>", 'q"uote&amp', "ctl\ufffd\ufffd", "bad\ufffd"]


def test_frames_too_narrow_to_see_are_left_out_and_said():
    stacks = {("main", "big"): 10**7, ("main", "tiny"): 1}
    svg = flamegraph.render(stacks)
    assert "tiny" not in {name for name, *_ in flamegraph.frames_of(svg)}
    assert "1 frame narrower than 0.1 px not drawn" in svg


# A document of the frames of one graph, with the methods the graph's script uses.
_DOM = r"""
const frames = JSON.parse(process.argv[1]), regex = process.argv[2];
function el(attrs) {
  const e = {attrs: Object.assign({}, attrs), style: {}, kids: {}, handlers: {}, textContent: ''};
  e.getAttribute = k => (k in e.attrs ? String(e.attrs[k]) : null);
  e.setAttribute = (k, v) => { e.attrs[k] = String(v); };
  e.hasAttribute = k => k in e.attrs;
  e.removeAttribute = k => { delete e.attrs[k]; };
  e.querySelector = s => e.kids[s];
  e.addEventListener = (t, f) => { e.handlers[t] = f; };
  return e;
}
const gs = frames.map(f => {
  const g = el({'data-x': f.x, 'data-w': f.w, 'data-d': f.d, 'data-n': f.n});
  g.kids.rect = el({fill: 'red'}); g.kids.text = el({}); g.kids.title = el({}); g.kids.title.textContent = f.n;
  return g;
});
const byId = {details: el({}), matched: el({}), unzoom: el({}), search: el({})};
global.document = {documentElement: el({}), querySelectorAll: () => gs, getElementById: i => byId[i]};
const win = {};
global.window = {prompt: () => regex, alert: m => { throw new Error(m); }, addEventListener: (t, f) => { win[t] = f; }};
eval(process.argv[3]);
const out = {};
function snap() { return gs.map(g => [g.attrs['data-n'], g.style.display === 'none' ? null : +g.kids.rect.attrs.width]); }
gs.find(g => g.attrs['data-n'] === 'alpha').handlers.click();
out.zoomed = snap(); out.unzoom = byId.unzoom.attrs.visibility;
byId.unzoom.handlers.click();
out.reset = snap();
byId.search.handlers.click();
out.matched = byId.matched.textContent;
out.highlighted = gs.filter(g => g.kids.rect.attrs.fill === 'rgb(220,0,220)').map(g => g.attrs['data-n']);
console.log(JSON.stringify(out));
"""


def test_the_script_zooms_into_a_frame_and_measures_a_search():
    node = shutil.which("node") or shutil.which("nodejs")
    assert node, "node runs the flame graph's script in this test: install nodejs"
    svg = flamegraph.render(STACKS, title="t")
    script = re.search(r"<!\[CDATA\[(.*)\]\]>", svg, re.S).group(1)
    frames = [{"n": n, "w": w, "d": d, "x": x} for n, w, d, x in flamegraph.frames_of(svg)]
    run = subprocess.run([node, "-e", _DOM, "--", json.dumps(frames), "^hop$", script], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    full = flamegraph.WIDTH - 2 * flamegraph.SIDE
    zoomed = out["zoomed"]
    # alpha fills the width, its ancestors too; beta's side is hidden; alpha's children keep their share
    assert dict((n, w) for n, w in zoomed if n in ("all", "main", "alpha", "beta")) == \
        {"all": full, "main": full, "alpha": full, "beta": None}
    assert sorted(w for n, w in zoomed if n == "hop" and w is not None) == [pytest.approx(full * 5 / 8, abs=0.01)]
    assert out["unzoom"] == "visible"
    assert [w for n, w in out["reset"] if n == "all"] == [full] and all(w is not None for _, w in out["reset"])
    assert sorted(out["highlighted"]) == ["hop", "hop"] and out["matched"] == "Matched: 70.00%"


def test_an_empty_graph_and_a_pruned_subtree_say_how_many_frames_are_missing():
    assert "not drawn" not in flamegraph.render({})
    svg = flamegraph.render({("main", "big"): 10**7, ("main", "tiny", "a", "b"): 1})
    assert "3 frames narrower than 0.1 px not drawn" in svg
