/* What waking a sleeping thread costs on this machine: two threads (mode 0) or two processes
 * (mode 1) bounce a byte through two pipes 200,000 times, the second pinned to CPU ARG2 (0: the
 * same CPU as the first, so each wake-up is a switch on a busy CPU; 1: the other CPU, which
 * goes idle between the bytes, so each wake-up is an idle CPU's). Prints the wall time and the
 * CPU time (both sides, user + system) per round trip.
 *
 *   gcc -O2 -o /tmp/wake-cost perf/wake-cost.c -lpthread && /tmp/wake-cost 0 1
 *
 * On the 2-core VM of perf/results/2026-12-07-wake-cost.md a round trip to the other CPU costs
 * 52 us of CPU with the guest's halt polling off and 8 us with 200 us of polling: a halted vCPU
 * charges ~22 us of CPU to the thread it wakes. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sched.h>
#include <pthread.h>
#include <time.h>
#include <sys/wait.h>
#include <sys/resource.h>
static int a[2], b[2]; static int N = 200000;
static void pin(int cpu){cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu,&s); sched_setaffinity(0,sizeof s,&s);}
static void *peer(void *x){ long cpu=(long)x; pin(cpu); char c; for(int i=0;i<N;i++){ read(a[0],&c,1); write(b[1],&c,1);} return 0;}
static double now(){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec*1e-9;}
static double cpu_s(){struct rusage r; getrusage(RUSAGE_SELF,&r); return r.ru_utime.tv_sec+r.ru_utime.tv_usec*1e-6+r.ru_stime.tv_sec+r.ru_stime.tv_usec*1e-6;}
int main(int argc,char**argv){
  int mode=atoi(argv[1]); int cpu2=atoi(argv[2]); pipe(a); pipe(b); pin(0); char c='x';
  double t0=now(), c0=cpu_s();
  if(mode==0){ pthread_t t; pthread_create(&t,0,peer,(void*)(long)cpu2);
    for(int i=0;i<N;i++){write(a[1],&c,1); read(b[0],&c,1);} pthread_join(t,0);
    double el=now()-t0; printf("threads cpu%d: %.2f us per round trip (2 switches), cpu %.2f us/rt\n",cpu2, el/N*1e6, (cpu_s()-c0)/N*1e6);
  } else { pid_t p=fork(); if(p==0){peer((void*)(long)cpu2); _exit(0);} 
    for(int i=0;i<N;i++){write(a[1],&c,1); read(b[0],&c,1);} int st; waitpid(p,&st,0);
    struct rusage r; getrusage(RUSAGE_CHILDREN,&r); double child=r.ru_utime.tv_sec+r.ru_utime.tv_usec*1e-6+r.ru_stime.tv_sec+r.ru_stime.tv_usec*1e-6;
    double el=now()-t0; printf("processes cpu%d: %.2f us per round trip (2 switches), cpu %.2f us/rt\n",cpu2, el/N*1e6, (cpu_s()-c0+child)/N*1e6);
  }
}
