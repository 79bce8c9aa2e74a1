'use strict'
// A few things made ahead of the boots that take them (rootdisk.js's root
// disk copies, userns.js's user namespaces), so a create does not wait for
// their making: take() hands one out if one is ready (else makes it then);
// refill() tops the stock up in the background, one at a time. A boot
// calls refill() once it has started (runtime.js): each make spawns a
// process, which blocks Node's event loop for a few ms.
class Ready {
  /* make(): Promise of a new thing; drop(thing): disposes of one never
     taken (after close) */
  constructor (make, drop, size = 2) {
    this.make = make
    this.drop = drop
    this.size = size
    this.stock = []
    this.filling = null
    this.closed = false
    /* a failed make stops the topping up until the next take */
    this.failing = false
  }

  async take () {
    const have = this.stock.shift()
    this.failing = false
    return have !== undefined ? have : this.make()
  }

  refill () {
    if (this.closed || this.failing || this.filling || this.stock.length >= this.size) return
    this.filling = this.make().then((x) => {
      if (this.closed) this.drop(x)
      else this.stock.push(x)
    }, () => { this.failing = true }).finally(() => {
      this.filling = null
      this.refill()
    })
  }

  close () {
    this.closed = true
    for (const x of this.stock.splice(0)) this.drop(x)
  }
}

module.exports = { Ready }
