"""Constant load against two hosts behind one proxy: what bench/loadtest/run.py runs while
the proxy's routes change every N seconds (the seed experiment "errors during configuration
churn", with Locust's own accounting).

    locust -f bench/loadtest/locustfile.py --headless -u 16 -r 16 -t 30s \
        --host http://127.0.0.1:18380 --csv out --only-summary

Every simulated user keeps one keep-alive connection (FastHttpUser) and alternates the two
hosts as fast as answers come. Anything but a 200 whose body names an upstream is a failure.
Hosts can be changed with LOADTEST_HOSTS=a.test,b.test.
"""
import os

from locust import FastHttpUser, constant, task

HOSTS = os.environ.get("LOADTEST_HOSTS", "main.test,other.test").split(",")


class TwoHosts(FastHttpUser):
    wait_time = constant(0)

    def _get(self, host):
        with self.client.get("/", headers={"Host": host}, name=host, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
            elif not (r.text or "").startswith("upstream"):
                r.failure(f"unexpected body {r.text[:40]!r}")
            else:
                r.success()

    @task
    def first_host(self):
        self._get(HOSTS[0])

    @task
    def second_host(self):
        self._get(HOSTS[1])
