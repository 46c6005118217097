"""A program for tests/integration/test_instrument.py, run by ``python -m usdtkit.instrument``.

It knows nothing of usdtkit.  It reads one command per line on stdin and answers each with one line
on stdout; while it waits it calls ``heartbeat()`` every 10 ms, so a tracer sees when the hooks are
on.  Each workload makes a known number of calls (no lambdas nor comprehensions, whose frames differ
between Python versions).
"""
import asyncio
import os
import select
import sys
import threading
import time


def heartbeat():
    pass


def inner():
    pass


def middle():
    inner()


def outer():
    middle()
    middle()


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def run_fib():
    fib(10)  # 177 calls


class Order:
    def __init__(self, lines):
        self.lines = lines

    def check(self, line):
        return line >= 0

    def save(self):
        for line in range(self.lines):
            self.check(line)


def run_order():
    Order(3).save()


def numbers(n):
    for i in range(n):
        yield i


def consume():
    total = 0
    for value in numbers(4):  # a start and 4 resumptions; 4 yields and a return
        total += value
    return total


def fail():
    raise ValueError("expected")


def deep():
    fail()


def recover():
    for _ in range(3):
        try:
            deep()
        except ValueError:
            pass


async def step(i):
    await asyncio.sleep(0.01)  # suspended once: a start and a resumption
    return i


async def gather():
    tasks = []
    for i in range(4):
        tasks.append(step(i))
    return await asyncio.gather(*tasks)  # suspended once


def run_async():
    asyncio.run(gather())


def leaf():
    pass


def worker(n):
    for _ in range(n):
        leaf()


def threaded():
    threads = []
    for _ in range(4):
        thread = threading.Thread(target=worker, args=(5,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()


def sleepy():
    time.sleep(0.05)


def sleeps():
    sleepy()
    sleepy()


def hooks_on():
    """Whether usdtkit's hooks are on for the calling thread."""
    if sys.version_info >= (3, 12):
        for tool in range(6):
            if sys.monitoring.get_tool(tool) == "usdtkit.instrument" and sys.monitoring.get_events(tool):
                return True
        return False
    return sys.getprofile() is not None


# A thread started before any tracer attaches: hooks must reach it too.
early_go = threading.Event()
early_done = threading.Event()
early_hooked = [False]


def early_leaf():
    pass


def early_work():
    for _ in range(3):
        early_leaf()


def early_thread():
    while True:
        early_hooked[0] = hooks_on()
        if early_go.wait(0.01):
            early_go.clear()
            early_work()
            early_done.set()


def run_early():
    early_done.clear()
    early_go.set()
    early_done.wait()


def child_heartbeat():
    pass


def child_work():
    inner()


def child(folder):
    """A forked worker, driven by files in ``folder``: it runs child_work() 7 times once ``go`` exists,
    writes its hooks' state to ``state`` all along, and exits once ``quit`` exists."""
    ran = False
    while not os.path.exists(os.path.join(folder, "quit")):
        child_heartbeat()
        with open(os.path.join(folder, "state.tmp"), "w") as out:
            out.write("on" if hooks_on() else "off")
        os.replace(os.path.join(folder, "state.tmp"), os.path.join(folder, "state"))
        if not ran and os.path.exists(os.path.join(folder, "go")):
            for _ in range(7):
                child_work()
            ran = True
            open(os.path.join(folder, "done"), "w").close()
        time.sleep(0.01)
    os._exit(0)


WORKLOADS = {"nested": outer, "fib": run_fib, "order": run_order, "generator": consume, "exceptions": recover,
             "async": run_async, "threads": threaded, "sleeps": sleeps, "early": run_early}


def handle(command):
    if command == "state":
        return ("on" if hooks_on() else "off") + " " + ("on" if early_hooked[0] else "off")
    if command.startswith("fork "):
        pid = os.fork()
        if pid == 0:
            child(command.split(" ", 1)[1])
        return str(pid)
    WORKLOADS[command]()
    return "done"


def serve():
    threading.Thread(target=early_thread, daemon=True).start()
    print("ready", os.getpid(), flush=True)
    while True:
        if not select.select([sys.stdin], [], [], 0.01)[0]:
            heartbeat()
            continue
        command = sys.stdin.readline().strip()
        if not command:
            return
        print(handle(command), flush=True)


if __name__ == "__main__":
    serve()
